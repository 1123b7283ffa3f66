"""The Faust pipeline: the app and its pure stages (validate, route, transform), fetch guard."""
