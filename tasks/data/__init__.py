"""Dataset tasks: real fetches (torchvision, mirrors) and offline generators in the same layout."""
