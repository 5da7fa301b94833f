"""Runware's task API: `adapter` (submit, poll, webhooks), `parse` (pure parsing), `payload` (our
parameters as an imageInference task)."""
