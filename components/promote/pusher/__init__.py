"""The pusher: the model store, models.config, the model card and the registry writes (executor.py), as TFX's Pusher."""
