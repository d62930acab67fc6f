"""Toy plug-ins the architecture tests add: each is one file that touches no protlm module."""
