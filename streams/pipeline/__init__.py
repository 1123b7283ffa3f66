"""The Faust pipeline: the app, its pure stages (validate, route, transform), outputs, acks."""
