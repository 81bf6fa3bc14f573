"""Promotion as TFX splits it: gate/ (decision + infra validation), pusher/ (model store, models.config, model card, registry writes); registry.py is shared."""
