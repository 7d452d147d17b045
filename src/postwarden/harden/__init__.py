"""postwarden harden: turn the audit's fixes into one reviewed, reversible change."""
