"""Evaluation of trained models: ELBO split (Table 3), importance-weighted log-likelihood
and bits/dim (Table 2), active units (Table 1), the share of an exemplar prior its k
nearest exemplars carry (retrieval gap), retrieval and kNN classification in the latent
space, 2-D pictures of it (t-SNE / PCA); all under `evaluation_mode`."""
from .active_units import active_units
from .elbo import evaluate_elbo
from .embedding import embed_2d
from .knn_classify import knn_classification_error
from .likelihood import bits_per_dim, log_likelihood, plan_batches
from .mode import evaluation_mode
from .neighbours import encode_means, nearest_neighbours
from .retrieval_gap import retrieval_gap, summarize_gap

__all__ = ["evaluation_mode", "evaluate_elbo", "log_likelihood", "plan_batches", "bits_per_dim",
           "active_units", "retrieval_gap", "summarize_gap", "encode_means", "nearest_neighbours",
           "knn_classification_error", "embed_2d"]
