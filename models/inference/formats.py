"""The formats a model leaves trainyard in, and what their files are named: said once, for the
exporters (models/inference/interchange.py), the API and the command line (which imports no torch)."""

FORMATS = ("safetensors", "pt2", "torchscript", "onnx")
SUFFIXES = {"safetensors": "safetensors", "pt2": "pt2", "torchscript": "pt", "onnx": "onnx"}
INPUTS = ("float", "pixels")
# The format a file's suffix asks for (TorchScript files are also named .pts, or .torchscript).
FORMAT_OF_SUFFIX = {f".{suffix}": fmt for fmt, suffix in SUFFIXES.items()} | {
    ".pts": "torchscript",
    ".torchscript": "torchscript",
}
