"""How well a search's scores order networks by accuracy: protocol, correlation, noise,
proxies."""
