"""The HTTP gateway: legacy systems publish to the bus over HTTP (CloudEvents, GovESB push)."""
