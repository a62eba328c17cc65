"""Client-side tools for an img2pose TorchServe: bulk backfill of a photo library and a visualizer.

Kept out of ``img2pose_serve`` so that the model archive (which packs that whole package) carries
no client code.
"""
