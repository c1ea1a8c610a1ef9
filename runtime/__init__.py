"""Serving exported models with ONNX Runtime. Torch-free: numpy, Pillow, onnxruntime.

>>> from convspec.runtime import Predictor
>>> Predictor("runs/digits-cnn/model.onnx").predict(["a.png"], top_k=3)

A deployment box needs only this package (and ``convspec.specs``); importing it never
imports torch (a test enforces it).
"""

from .datasets import DataError, list_csv, list_folder, list_images
from .evaluate import EvalResult, evaluate, evaluate_arrays, evaluate_files
from .files import WriteError
from .images import IMAGE_EXTENSIONS, ImageError, load_image, load_image_bytes, load_images, prepare_array
from .metadata import MetadataWarning, ModelInfo, read_metadata
from .predictor import ModelError, Prediction, Predictor, cuda_usable

__all__ = [
    "DataError",
    "EvalResult",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "MetadataWarning",
    "ModelError",
    "ModelInfo",
    "Prediction",
    "Predictor",
    "cuda_usable",
    "evaluate",
    "evaluate_arrays",
    "evaluate_files",
    "list_csv",
    "list_folder",
    "list_images",
    "load_image",
    "load_image_bytes",
    "load_images",
    "prepare_array",
    "read_metadata",
    "WriteError",
]
