"""Kubernetes side of training: PyTorchJob (Training Operator v1) and TrainJob (Kubeflow Trainer v2) manifests,
offline validation against the vendored CRDs, and one runner (``launch.run_cluster_job``) for both."""
