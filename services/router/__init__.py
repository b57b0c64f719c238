"""The router daemon: picks targets for messages and calls them (RouterService)."""
