"""Constants shared by the data pipeline and the pictures, in a module that imports nothing heavy
(no DALI), so models, methods and fastssl.base.viz import on machines without DALI (the GPU check)."""

# ImageNet's per-channel mean and std in 0..1 units (torchvision's values), used to normalize views.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
