"""Swarm engine daemon: particle swarm optimisation and partitioned work over agents."""
