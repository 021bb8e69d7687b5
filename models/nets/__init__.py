"""Networks: the architectures a spec names, pretrained torchvision backbones, and what a network costs."""
