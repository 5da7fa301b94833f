"""What both sandboxes use: server life cycle, faults, ledger, images, ids, webhook sender, config."""
