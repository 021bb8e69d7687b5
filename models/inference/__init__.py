"""Inference: a checkpoint as a predictor (torch or ONNX Runtime), its exports and imports, and evaluation."""
