"""``postwarden audit``: the hardening rule catalogue over Postfix's effective configuration.

Security: see the submodules; nothing here writes or executes anything.
Standards: postconf(5), master(5) and the Postfix READMEs each rule cites.
"""
