"""postwarden policyd: greylisting, SPF and rate limits for Postfix's check_policy_service."""
