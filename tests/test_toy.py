"""toy.py's point, pinned: on one frozen random layer a fixed prompt cannot express "is a + b odd?",
prompts made from e can, and LOPA without the instance information in e is back at chance."""
import toy


def test_input_dependent_prompts_fit_what_a_fixed_prompt_cannot():
    acc = {name: a for name, (_, a) in toy.run(layers=1, seed=0, steps=300).items()}
    assert acc["prompt"] < 0.8 and acc["prompt, m = 32"] < 0.9
    assert acc["lopa"] > 0.97 and acc["idpg"] > 0.97
    assert acc["lopa, every e = mean e"] < 0.6


def test_the_task_is_balanced_and_holds_every_pair_once():
    ids, lengths, y = toy.parity_task()
    assert len(set(map(tuple, ids.tolist()))) == 256 and lengths.eq(2).all()
    assert y.sum() == 128 and (y == (ids.sum(1) % 2)).all()
