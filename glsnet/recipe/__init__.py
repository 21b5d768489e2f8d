"""The training recipe beyond the optimiser: ImageNet weights, schedule, augmentation, staged training."""
