"""The search-space declarations of method cards (utils/core/search_space.py): forms, refusals, relative ranges."""
import pytest

from utils.core.errors import UserError
from utils.core.search_space import Param, contains, parse_space


def test_each_form_parses_in_declaration_order():
    params = parse_space("M", {"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                               "k": ("int", 1, 5), "mode": ("choice", ("a", "b"))})
    assert [p.name for p in params] == ["lr", "alpha", "k", "mode"]
    assert params[0] == Param("lr", "log", 0.1, 10.0, relative=True)
    assert params[2] == Param("k", "int", 1, 5)
    assert params[3].choices == ("a", "b")
    assert params[0].describe() == "--lr log-uniform in [0.1, 10] x its default"
    assert params[2].describe() == "--k an integer in [1, 5]"


def test_a_relative_range_resolves_to_multiples_of_the_default():
    lr = parse_space("M", {"lr": ("log", 0.1, 10.0, "relative")})[0]
    resolved = lr.resolved(1e-3)
    assert resolved.relative is False and resolved.low == pytest.approx(1e-4) and resolved.high == pytest.approx(1e-2)
    assert contains(resolved, 1e-3) and not contains(resolved, 1e-1)
    absolute = parse_space("M", {"alpha": ("float", 0.1, 0.9)})[0]
    assert absolute.resolved(0.5) is absolute


@pytest.mark.parametrize("space, words", [
    ({"epochs": ("int", 1, 3)}, "never searched"),
    ({"epochs_s1": ("int", 1, 3)}, "never searched"),
    ({"seed": ("int", 0, 3)}, "never searched"),
    ({"--lr": ("log", 1e-4, 1e-2)}, "without dashes"),
    ({"lr": ("loguniform", 1e-4, 1e-2)}, "kind one of"),
    ({"lr": ("log", 0.0, 1e-2)}, "low > 0"),
    ({"lr": ("float", 1.0, 0.5)}, "low < high"),
    ({"k": ("int", 1.5, 4)}, "integer ends"),
    ({"mode": ("choice", ("a",))}, "at least two"),
    ({"lr": ("log", "a", 1.0)}, "with numbers"),
])
def test_malformed_entries_are_refused_with_the_method_and_option_named(space, words):
    with pytest.raises(UserError, match=words) as caught:
        parse_space("KD", space)
    assert "method 'KD'" in str(caught.value)


def test_a_card_with_a_malformed_space_fails_where_it_is_declared():
    from utils.core.cards import MethodCard

    with pytest.raises(UserError, match="never searched"):
        MethodCard(name="X", search_space={"epochs": ("int", 1, 2)})
    assert MethodCard(name="Y", search_space={"lr": ("log", 1e-4, 1e-2)}).search_params[0].log
