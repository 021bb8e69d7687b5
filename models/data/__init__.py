"""Data: datasets built-in, uploaded and synthetic, their splits, images, the input contract and augmentation."""
