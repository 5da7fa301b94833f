"""fal's queue API: `adapter` (submit, poll, cancel, webhooks), `parse` (pure parsing), `payload`
(our parameters as fal's model input), `signature` (Ed25519 webhook signatures), `pricing` (the
Platform API's prices)."""
