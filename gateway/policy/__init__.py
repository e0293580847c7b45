"""The policy package (see the README's Layout section)."""
