"""The JSON Schemas of lightspeed-collector, shipped as package data.

Load them with ``importlib.resources.files("lightspeed_collector.schemas")``.
"""
