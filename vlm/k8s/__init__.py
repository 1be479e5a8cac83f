"""Kubernetes side of training: PyTorchJob manifests (kubeflow-training SDK), validation, and a runner."""
