"""The rules: thresholds, the original's compute, the verdict, the parts a count includes, the shared
classify-and-publish logic. Reads the engine; knows nothing of training or storage.
"""
