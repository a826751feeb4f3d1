"""Review of the trained-model tools: argument names in errors, neighbour exclusion
checks, distinct class colours in latent-space plots."""
from __future__ import annotations

import matplotlib.axes
import pytest
import torch

from exvae_fast.evaluation import nearest_neighbours
from exvae_fast.generation import augment_dataset
from exvae_fast.plots import plot_embedding

from test_generation import LATENT, LadderPrior, Toy, images


def test_augment_dataset_names_per_example_when_it_is_not_a_count():
    model = Toy(LadderPrior(LATENT))
    with pytest.raises(ValueError, match="per_example: expected an int >= 1"):
        augment_dataset(model, images(3), None, 0, progress=False)


def test_images_outside_the_unit_interval_or_not_finite_are_named():
    from exvae_fast.generation import exemplar_conditioned_samples

    model = Toy(LadderPrior(LATENT))
    byte_scaled, with_nan = images(3) * 255, images(3)
    with_nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"images: expected pixel values in \[0, 1\] .*got values in \[8"):
        augment_dataset(model, byte_scaled, None, 1, progress=False)
    with pytest.raises(ValueError, match="exemplars: contains NaN/Inf"):
        exemplar_conditioned_samples(model, with_nan, 2)


def test_nearest_neighbours_rejects_an_exclude_that_is_not_one_index_per_query():
    model = Toy(LadderPrior(LATENT))
    queries = images(4)
    keys = torch.randn(6, LATENT)
    with pytest.raises(TypeError, match="exclude: expected"):
        nearest_neighbours(model, queries, keys, 2, exclude=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"exclude: expected .*\[4\]"):
        nearest_neighbours(model, queries, keys, 2, exclude=torch.arange(3), batch_size=2)
    _, idx = nearest_neighbours(model, queries, keys, 2, exclude=torch.tensor([0, -1, 2, 5]), batch_size=3)
    assert idx.shape == (4, 2)


@pytest.mark.parametrize("keys, k, error, match", [
    (torch.randn(6, LATENT + 1), 2, ValueError, r"key_means: expected shape \[N, %d\]" % LATENT),
    (torch.arange(6 * LATENT).reshape(6, LATENT), 2, TypeError, "key_means: expected a floating-point"),
    (torch.randn(6, LATENT), 7, ValueError, r"k: expected at most 6 \(the rows of key_means\)"),
    (torch.randn(6, LATENT), 0, ValueError, "k: expected"),
])
def test_nearest_neighbours_names_its_own_arguments(keys, k, error, match):
    with pytest.raises(error, match=match):
        nearest_neighbours(Toy(LadderPrior(LATENT)), images(4), keys, k)


@pytest.mark.filterwarnings("error::UserWarning")  # a legend too tall for the figure collapses the axes
def test_plot_embedding_gives_every_class_its_own_colour(tmp_path, monkeypatch):
    colours = []
    scatter = matplotlib.axes.Axes.scatter

    def recording(self, *args, **kwargs):
        colours.append(tuple(kwargs.get("color", ())))
        return scatter(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", recording)
    classes = 50  # Omniglot's alphabets
    labels = torch.arange(classes).repeat_interleave(2)
    plot_embedding(torch.randn(labels.numel(), 2), tmp_path / "many.png", labels)
    assert len(colours) == classes
    assert len(set(colours)) == classes
