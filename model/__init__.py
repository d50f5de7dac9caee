"""pix2pixHD model library: networks, losses, input encoding, checkpoints.

Pure PyTorch + numpy. Knows nothing about MLflow, DVC, Kubeflow, S3 or the command line.
"""

__version__ = "0.1.0"
