"""The registry daemon: agent catalog, health, discovery, locks and consensus."""
