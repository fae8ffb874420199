"""Stage train: backbone by name, dataset, augmentation and the training loop."""
