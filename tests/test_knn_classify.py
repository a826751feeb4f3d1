"""Retrieval and kNN classification in the latent space against brute forces written here
(float64 distances, a stable sort, a vote counted by hand)."""
from __future__ import annotations

import pytest
import torch

from exvae_fast.evaluation import encode_means, knn_classification_error, nearest_neighbours
from exvae_fast.evaluation.knn_classify import vote
from exvae_fast.models import VAE
from exvae_fast.priors import StandardPrior

SHAPE, LATENT = (1, 4, 4), 3


def model() -> VAE:
    torch.manual_seed(0)
    return VAE(StandardPrior(LATENT), input_shape=SHAPE, latent_dim=LATENT)


def brute_force_error(net, train, train_labels, test, test_labels, k, batch_size):
    # Encoded in the batches knn_classification_error uses: a GEMM may round a row differently
    # by the batch's size or the row's position in it (~1e-6 here, machine-dependent), and the
    # closest pairs of distances in these data differ by little more, so one call over all
    # rows could flip a neighbour. With the same batches the means agree bit for bit.
    with torch.no_grad():
        keys, queries = (torch.cat([net.encode(b)[0] for b in x.split(batch_size)]).double()
                         for x in (train, test))
    wrong = 0
    for q, truth in zip(queries, test_labels):
        order = torch.sort(((keys - q) ** 2).sum(1), stable=True).indices[:k]
        votes: dict[int, list[int]] = {}
        for rank, label in enumerate(train_labels[order].tolist()):
            votes.setdefault(label, []).append(rank)
        best = max(votes, key=lambda c: (len(votes[c]), -votes[c][0]))
        wrong += best != int(truth)
    return wrong / test.shape[0]


def test_vote_counts_and_breaks_ties_by_the_nearer_class():
    labels = torch.tensor([[2, 1, 1, 2, 0], [3, 0, 0, 3, 3], [4, 4, 0, 0, 1], [1, 1, 1, 1, 1]])
    assert vote(labels, 5).tolist() == [2, 3, 4, 1]
    assert vote(labels[:, :1], 5).tolist() == [2, 3, 4, 1]
    assert vote(torch.tensor([[0, 1]]), 2).tolist() == [0]


@pytest.mark.parametrize("backend", ["torch", "triton"])  # triton: the interpreter without a GPU
def test_error_matches_brute_force_for_every_k(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    net = model()
    torch.manual_seed(1)
    train, test = torch.rand(57, 16), torch.rand(23, 16)
    train_labels, test_labels = torch.randint(0, 4, (57,)), torch.randint(0, 4, (23,))
    ks = (1, 3, 4, 10) if backend == "triton" else (1, 3, 4, 10, 57)  # k = 57 = N: slow to interpret
    errors = knn_classification_error(net, train, train_labels, test, test_labels, ks, batch_size=8,
                                      backend=backend, progress=False)
    assert list(errors) == list(ks)
    for k in ks:
        assert errors[k] == pytest.approx(brute_force_error(net, train, train_labels, test, test_labels, k, 8))



def test_votes_around_a_mislabelled_key():
    """Two well-separated clusters of 6 keys each, plus a key labelled 1 right next to the
    class-0 query: k = 1 follows it (wrong), k = 2 ties and goes to its nearer class (wrong),
    k = 3 and 7 are outvoted by the cluster (right); the class-1 query is right for every k."""
    net = model()
    gen = torch.Generator().manual_seed(5)
    centres = 0.2 + 0.6 * torch.rand(2, 16, generator=gen)

    def around(centre, n, spread):
        return centre + spread * torch.randn(n, 16, generator=gen)

    test = torch.cat([around(centres[0], 1, 1e-2), around(centres[1], 1, 1e-2)])
    train = torch.cat([around(centres[0], 6, 1e-2), around(centres[1], 6, 1e-2), around(test[0], 1, 1e-4)])
    train_labels, test_labels = torch.tensor([0] * 6 + [1] * 7), torch.tensor([0, 1])
    errors = knn_classification_error(net, train, train_labels, test, test_labels, (1, 2, 3, 7),
                                      progress=False)
    assert errors == {1: 0.5, 2: 0.5, 3: 0.0, 7: 0.0}


def test_encode_means_batches_like_one_call():
    net = model()
    x = torch.rand(11, 16)
    torch.testing.assert_close(encode_means(net, x, batch_size=4), net.encode(x)[0].detach())


@pytest.mark.parametrize("with_exclude", [False, True])
def test_nearest_neighbours_match_brute_force(with_exclude):
    net = model()
    torch.manual_seed(4)
    train = torch.rand(40, 16)
    queries = train[[3, 17, 39, 0, 22]] if with_exclude else torch.rand(5, 16)
    exclude = torch.tensor([3, 17, 39, -1, 22]) if with_exclude else None
    keys = encode_means(net, train)
    sq, idx = nearest_neighbours(net, queries, keys, 6, exclude=exclude, batch_size=2)
    assert sq.shape == idx.shape == (5, 6) and idx.dtype == torch.int64
    with torch.no_grad():
        q = net.encode(queries)[0].double()
    for b in range(5):
        dist = ((keys.double() - q[b]) ** 2).sum(1)
        if with_exclude and exclude[b] >= 0:
            dist[exclude[b]] = float("inf")
        expected = torch.sort(dist, stable=True).indices[:6]
        assert idx[b].tolist() == expected.tolist()
        torch.testing.assert_close(sq[b].double(), dist[expected], rtol=1e-5, atol=1e-6)
    if with_exclude:
        assert idx[3, 0] == 0  # the row without an exclusion finds itself first
        assert all(int(exclude[b]) not in idx[b].tolist() for b in (0, 1, 2, 4))


def test_rejects_bad_arguments():
    net, x, y = model(), torch.rand(5, 16), torch.zeros(5, dtype=torch.int64)
    with pytest.raises(ValueError, match="training set has 5 rows"):
        knn_classification_error(net, x, y, x, y, (6,), progress=False)
    with pytest.raises(ValueError, match="ks"):
        knn_classification_error(net, x, y, x, y, (), progress=False)
    with pytest.raises(TypeError, match="train_labels"):
        knn_classification_error(net, x, y.int(), x, y, (1,), progress=False)
    with pytest.raises(ValueError, match="test_labels"):
        knn_classification_error(net, x, y, x, y[:4], (1,), progress=False)
    with pytest.raises(ValueError, match="train_labels: expected class labels >= 0"):
        knn_classification_error(net, x, y - 1, x, y, (1,), progress=False)
    with pytest.raises(ValueError, match="test"):
        knn_classification_error(net, x, y, x[:, :8], y, (1,), progress=False)


@pytest.mark.gpu
def test_cuda_errors_equal_the_cpu_errors():
    """On CUDA the vote uses the fused kNN search: the same neighbours as the torch reference
    on the same means, so the same errors; and about the CPU's errors."""
    net = model()
    torch.manual_seed(2)
    train, test = torch.rand(300, 16), torch.rand(70, 16)
    train_labels, test_labels = torch.randint(0, 5, (300,)), torch.randint(0, 5, (70,))
    ks = (1, 3, 10)
    on_cpu = knn_classification_error(net, train, train_labels, test, test_labels, ks, progress=False)
    net.cuda()
    on_cuda = knn_classification_error(net, train, train_labels, test, test_labels, ks, progress=False)
    # Exact against the torch search on the same CUDA means (same batches: bit-equal means).
    # Not exact against the CPU: cuBLAS and the CPU BLAS round the encoder's means differently
    # (~1e-6), and in these data two distances at a k-boundary are only ~1e-5 apart, so a
    # neighbour (and the vote of that one test row) may change between devices.
    reference = knn_classification_error(net, train, train_labels, test, test_labels, ks, backend="torch",
                                         progress=False)
    assert on_cuda == reference
    assert all(abs(on_cuda[k] - on_cpu[k]) <= 1 / 70 + 1e-12 for k in ks), (on_cuda, on_cpu)
