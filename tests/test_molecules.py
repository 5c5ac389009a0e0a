"""The molecules data set (conformers, cache, split, padded point clouds) and its metrics."""

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")

from rdkit import Chem  # noqa: E402

from diffuse.data import load_dataset  # noqa: E402
from diffuse.data import molecules as molecules_data  # noqa: E402
from diffuse.metrics import molecules as metrics  # noqa: E402

# A handful of small molecules: chains, rings, carbonyls, a nitrile, a fluoride, and aromatic
# rings (benzene, pyridine, phenol, furan), which EDM's rule alone reads wrongly.
SMILES = ["C", "CC", "CCO", "CC(=O)O", "CC#N", "C=CC=O", "OCC(O)CO", "CN(C)C", "FC(F)F", "NCC(=O)O",
          "CCOC(C)=O", "C1CCOC1", "C1CC1", "CNC=O", "CC(C)O", "CCCCO", "c1ccccc1", "c1ccncc1", "Oc1ccccc1",
          "c1ccoc1"]
AROMATIC = {"c1ccccc1", "c1ccncc1", "Oc1ccccc1", "c1ccoc1"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache made from SMILES alone (not RDKit's bundled files), so building it takes a second."""
    folder = tmp_path_factory.mktemp("molecules-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(molecules_data, "source_smiles", lambda max_heavy_atoms: sorted(
            metrics.canonical_smiles(s) for s in SMILES))
        molecules_data.cached_conformers(cache_dir=folder)
    return folder


@pytest.fixture(scope="module")
def splits(cache):
    return {split: load_dataset("molecules", split, cache_dir=str(cache)) for split in ("train", "test")}


def real_molecules(ds):
    return metrics.from_padded(ds.data, ds.columns["atom_types"], ds.columns["mask"])


def test_conformers_are_deterministic_under_the_seed():
    first, again = molecules_data.conformer("CCCCO", seed=3), molecules_data.conformer("CCCCO", seed=3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[0].tolist().count(1) == 10  # hydrogens are explicit: butanol is C4H10O
    other = molecules_data.conformer("CCCCO", seed=4)
    assert not np.allclose(first[1], other[1])


def test_the_cache_is_read_not_rebuilt(cache, monkeypatch):
    def no_rdkit(*args, **kwargs):
        raise AssertionError("the cached conformers were made again")
    monkeypatch.setattr(molecules_data, "conformer", no_rdkit)
    conformers = molecules_data.cached_conformers(cache_dir=cache)
    assert len(conformers.smiles) == len(SMILES) and len(conformers.failed) == 0
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob(".*"))  # no temporary files left


def test_examples_are_centred_padded_and_masked(splits):
    train, test = splits["train"], splits["test"]
    assert train.modality == "points" and train.shape == test.shape and train.shape[1] == 3
    assert set(train.fields) == {"x", "atom_types", "mask"}
    batch = train.__getitems__(list(range(len(train))))
    x, types, mask = batch["x"], batch["atom_types"], batch["mask"]
    assert mask.dtype == torch.bool and types.shape == (*x.shape[:2], 5)
    counts = mask.sum(1, keepdim=True)
    centre = (x * mask[..., None]).sum(1) / counts
    assert centre.abs().max() < 1e-5
    assert (x[~mask] == 0).all() and (types[~mask] == 0).all()
    assert (types[mask].sum(-1) == 1).all()
    # the mask counts every atom, hydrogens included: ethanol is C2H6O
    ethanol = train.smiles.index("CCO")
    assert int(counts[ethanol]) == 9 and types[ethanol, :9].sum(0).tolist() == [6, 2, 0, 1, 0]
    example = train[ethanol]
    assert torch.equal(example["x"], x[ethanol]) and torch.equal(example["mask"], mask[ethanol])


def test_the_split_is_fixed_by_molecule(splits):
    train, test = splits["train"].smiles, splits["test"].smiles
    assert sorted(train + test) == sorted(metrics.canonical_smiles(s) for s in SMILES)
    assert all(molecules_data.in_test_split(s) for s in test)
    assert not any(molecules_data.in_test_split(s) for s in train)
    assert len(test) >= 1
    subset = splits["train"].subset([0, 2], "two")
    assert subset.smiles == [train[0], train[2]] and len(subset) == 2


def test_the_real_molecules_score_at_the_ceiling(splits):
    """The molecules' own conformers: EDM's rule reads every non-aromatic one as stable and valid,
    and with the aromatic step every one (as measured on these molecules: 100%)."""
    data = splits["train"]
    molecules = real_molecules(data)
    plain = [m for m, s in zip(molecules, data.smiles) if s not in AROMATIC]
    assert metrics.stability(plain) == {"atom_stability": 1.0, "molecule_stability": 1.0}
    checked = metrics.validity(plain)
    assert checked["validity"] == 1.0 and checked["connected"] == 1.0
    assert checked["smiles"] == [s for s in data.smiles if s not in AROMATIC]  # the bonds are the molecule's own
    scored = metrics.evaluate_molecules(molecules, reference=molecules, aromatic=True)
    assert scored["atom_stability"] == 1.0 and scored["molecule_stability"] == 1.0 and scored["validity"] == 1.0
    assert scored["uniqueness"] == 1.0 and scored["bond_length_w1"] == 0.0 and scored["bond_angle_w1"] == 0.0
    assert metrics.validity(molecules, aromatic=True)["smiles"] == data.smiles


def test_aromatic_rings_need_the_aromatic_step():
    numbers, positions = molecules_data.conformer("c1ccccc1")
    assert metrics.stability([(numbers, positions)])["molecule_stability"] == 0.0
    assert metrics.molecule_smiles(numbers, positions) == ("C1CCCCC1", True)  # six single bonds
    assert metrics.stability([(numbers, positions)], aromatic=True)["molecule_stability"] == 1.0
    assert metrics.molecule_smiles(numbers, positions, aromatic=True) == ("c1ccccc1", True)


def test_garbled_molecules_score_low(splits):
    molecules = real_molecules(splits["train"])
    spread_apart = [(z, 3.0 * p) for z, p in molecules]  # every bond stretched beyond its window
    scored = metrics.stability(spread_apart)
    assert scored["atom_stability"] < 0.05 and scored["molecule_stability"] == 0.0
    rng = np.random.default_rng(0)
    jumbled = [(z, rng.uniform(-1.5, 1.5, size=p.shape)) for z, p in molecules]  # atoms crammed together
    scored = metrics.evaluate_molecules(jumbled, reference=molecules, aromatic=True)
    # measured: 27% of atoms, no molecule stable, a third valid (RDKit's check is lenient: an atom
    # short of bonds gets implicit hydrogens, so a small molecule's jumble can pass)
    assert scored["atom_stability"] < 0.5 and scored["molecule_stability"] < 0.1 and scored["validity"] < 0.5
    assert scored["bond_length_w1"] > 0.05
    empty = (np.zeros(0, np.int64), np.zeros((0, 3)))  # a sample whose mask is all False
    assert metrics.stability([empty])["molecule_stability"] == 0.0 and metrics.validity([empty])["validity"] == 0.0


def test_bond_orders_follow_the_table():
    carbon = (6, 6)
    assert [metrics.bond_order(*carbon, d) for d in (1.20, 1.34, 1.54, 1.70)] == [3, 2, 1, 0]
    assert metrics.bond_order(1, 6, 1.09) == 1 and metrics.bond_order(1, 1, 1.5) == 0
    assert metrics.bond_order(6, 9, 1.30) == 1  # C-F has no double bond to read


def test_uniqueness_and_novelty_on_constructed_sets():
    ethanol, methane = molecules_data.conformer("CCO"), molecules_data.conformer("C")
    checked = metrics.validity([ethanol, ethanol, methane], training_smiles=["CCO"])
    assert checked["validity"] == 1.0
    assert checked["uniqueness"] == pytest.approx(2 / 3) and checked["novelty"] == pytest.approx(1 / 2)
    apart = (ethanol[0], ethanol[1] * 3.0)  # nine lone atoms: valid to RDKit (implicit hydrogens), not connected
    checked = metrics.validity([apart, methane])
    assert checked["validity"] == 1.0 and checked["connected"] == 0.5


def test_wasserstein_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(1.0, 2.0, size=70)
    assert metrics.wasserstein_1d(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)
    assert metrics.wasserstein_1d(a, a + 0.25) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        metrics.wasserstein_1d(a, [])


@pytest.mark.parametrize("suffix", [".xyz", ".sdf"])
def test_writers_round_trip_through_rdkit(splits, tmp_path, suffix):
    data = splits["train"]
    molecules = real_molecules(data)
    path = metrics.write_molecules(tmp_path / f"mols{suffix}", molecules)
    read = metrics.read_molecules(path)
    assert len(read) == len(molecules)
    for (z, p), (z2, p2) in zip(molecules, read):
        np.testing.assert_array_equal(z, z2)
        np.testing.assert_allclose(p, p2, atol=1e-4)
    if suffix == ".sdf":
        supplier = Chem.SDMolSupplier(str(path), removeHs=False)
        names = [Chem.MolToSmiles(Chem.RemoveHs(m), isomericSmiles=False) for m in supplier]
        plain = [s for s in data.smiles if s not in AROMATIC]
        assert [n for n, s in zip(names, data.smiles) if s not in AROMATIC] == plain
    else:  # RDKit reads one XYZ block at a time: the file's first
        lines = path.read_text().splitlines()
        first = Chem.MolFromXYZBlock("\n".join(lines[: int(lines[0]) + 2]))
        assert [a.GetAtomicNum() for a in first.GetAtoms()] == molecules[0][0].tolist()
        np.testing.assert_allclose(first.GetConformer().GetPositions(), molecules[0][1], atol=1e-4)
    with pytest.raises(ValueError, match="xyz"):
        metrics.write_molecules(tmp_path / "mols.pdb", molecules)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="atomic numbers"):
        metrics.stability([(np.array([6, 17]), np.zeros((2, 3)))])
    with pytest.raises(ValueError, match="positions"):
        metrics.stability([(np.array([6, 6]), np.zeros((3, 3)))])
    with pytest.raises(ValueError, match="max_heavy_atoms"):
        molecules_data.cached_conformers(max_heavy_atoms=1)
    with pytest.raises(ValueError, match="atom_types"):
        metrics.from_padded(np.zeros((1, 4, 3)), np.zeros((1, 4, 4)), np.ones((1, 4), bool))
