"""The prediction page for pathologists: served by the REST server at `/`, with Grad-CAM explanations."""
