"""polypindex."""
