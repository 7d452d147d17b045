"""The lab: real mail components started privately for integration tests and experiments.

Security: every component runs from a config this package writes under a directory the
caller owns, listens on loopback or a UNIX socket only, and is stopped by its owner; nothing
read from outside reaches a command line.
Standards: see each module (``dovecot``: Dovecot's SASL auth server).
"""
