"""Helpers shared by test modules (fixtures stay in tests/conftest.py); test modules never import each other."""
