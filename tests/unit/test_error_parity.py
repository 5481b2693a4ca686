"""One registry of conditions. Every exception the service reports to a client is a class of
kms/errors.py; both SDKs rebuild each of them as a class of the same name, under the same status
code and in the same place of the hierarchy: the Python SDK (kms_client.errors, walked through
its registry) and the TypeScript SDK (clients/node/src/errors.ts, read as text, so that this
test needs no Node). Exceptions that never reach a client are named by condition, without an
``Error`` suffix."""

from __future__ import annotations

import ast
import functools
import inspect
import re
from pathlib import Path

import grpc
import pytest

import kms.errors as server
import kms_client
from kms_client import errors as sdk

ROOT = Path(__file__).resolve().parents[2]
NODE_ERRORS = ROOT / "clients" / "node" / "src" / "errors.ts"
NODE_INDEX = ROOT / "clients" / "node" / "src" / "index.ts"

SERVER = {
    name: cls
    for name, cls in inspect.getmembers(server, inspect.isclass)
    if issubclass(cls, server.KmsError) and cls is not server.KmsError
}
# Server reasons an SDK deliberately rebuilds as another, broader class: reason -> that class's
# name, with the reason why. None today; a fold must be added here, never happen by omission.
FOLDED: dict[str, str] = {}
# Classes of the SDKs that no server class stands for: raised by the SDKs themselves.
SDK_ONLY = {"TruncatedCiphertext", "EncryptionContextMismatch", "ResponseChecksumMismatch"}


def _server_parent(cls: type[server.KmsError]) -> type[server.KmsError]:
    (parent,) = cls.__bases__
    return parent


def _python_class(reason: str) -> type[sdk.KmsError]:
    found = sdk.reason_class(FOLDED.get(reason, reason))
    assert found is not None, f"kms_client.errors has no class for the service's {reason} (add one)"
    return found


def test_the_server_registry_is_not_empty_and_holds_the_known_conditions():
    assert {"KeyNotFound", "InvalidCiphertext", "KeyVersionDisabled", "RateLimited", "Internal"} <= SERVER.keys()


@pytest.mark.parametrize("reason", sorted(SERVER))
def test_the_python_sdk_has_the_class_of_every_server_condition(reason):
    cls = _python_class(reason)
    assert reason in FOLDED or cls.__name__ == reason
    assert cls.code.name == SERVER[reason].code, f"{reason}: service {SERVER[reason].code}, SDK {cls.code.name}"
    assert getattr(kms_client, cls.__name__) is cls, f"kms_client does not export {cls.__name__}"


@pytest.mark.parametrize("reason", sorted(set(SERVER) - set(FOLDED)))
def test_the_python_class_sits_where_the_server_class_does(reason):
    """Under the class of the server's parent; under its status code's class where the
    server's parent is the root; a status code's own class directly under the root."""
    cls, parent = _python_class(reason), _server_parent(SERVER[reason])
    if sdk.code_class(cls.code) is cls:
        expected = sdk.KmsError
    elif parent is server.KmsError:
        expected = sdk.code_class(cls.code)
    else:
        expected = _python_class(parent.__name__)
    assert cls.__bases__ == (expected,), f"{reason} derives from {cls.__bases__}, the service's from {parent.__name__}"


@pytest.mark.parametrize("reason", sorted(SERVER))
def test_the_python_sdk_rebuilds_each_reason_with_its_own_code(reason):
    code = getattr(grpc.StatusCode, SERVER[reason].code)
    rebuilt = sdk.error_for(code, "message", reason)
    assert type(rebuilt) is _python_class(reason)
    assert (rebuilt.reason, rebuilt.message, rebuilt.code) == (reason, "message", code)


def test_every_python_class_is_a_server_condition_a_status_code_or_the_sdks_own():
    status_classes = {cls.__name__ for cls in map(sdk.code_class, grpc.StatusCode) if cls is not None}
    registered = {name for name, cls in inspect.getmembers(sdk, inspect.isclass) if issubclass(cls, sdk.KmsError)}
    unexplained = registered - set(SERVER) - status_classes - SDK_ONLY - {"KmsError"}
    assert not unexplained


def test_registering_a_reason_twice_is_refused():
    with pytest.raises(TypeError, match="KeyNotFound is registered twice"):
        type("KeyNotFound", (sdk.NotFound,), {"__module__": "kms_client.errors"})


def test_an_applications_own_subclass_changes_nothing_the_sdk_raises():
    class KeyNotFound(kms_client.KeyNotFound):
        pass

    rebuilt = sdk.error_for(grpc.StatusCode.NOT_FOUND, "gone", "KeyNotFound")
    assert type(rebuilt) is kms_client.KeyNotFound


# -- the TypeScript SDK -----------------------------------------------------------------------

_NODE_CLASS = re.compile(
    r"^export class (?P<name>\w+) extends (?P<parent>\w+) "
    r"\{ static \{ (?P<how>codeClass|reason)\(this(?P<args>[^)]*)\); \} \}",
    re.MULTILINE,
)


def _node_classes() -> dict[str, dict]:
    """name -> {"parent", "code" (own, or None), "reasons"}, from the class statements of errors.ts."""
    classes = {}
    for match in _NODE_CLASS.finditer(NODE_ERRORS.read_text()):
        args = [a.strip() for a in match["args"].split(",") if a.strip()]
        code = None
        if match["how"] == "codeClass":
            code = args.pop(0).removeprefix("status.")
        names = [a.strip('"') for a in args]
        reasons = [match["name"], *names] if match["how"] == "codeClass" else names or [match["name"]]
        classes[match["name"]] = {"parent": match["parent"], "code": code, "reasons": reasons}
    return classes


NODE = _node_classes()
NODE_BY_REASON = {reason: name for name, spec in NODE.items() for reason in spec["reasons"]}
NODE_EXPORTS = set(re.findall(r"\w+", re.search(r"export \{([^}]*)\} from \"./errors\";", NODE_INDEX.read_text())[1]))


def _node_code(name: str) -> str | None:
    while name in NODE:
        if NODE[name]["code"] is not None:
            return NODE[name]["code"]
        name = NODE[name]["parent"]
    return None


def test_errors_ts_is_read_as_it_is_written():
    assert NODE["KeyNotFound"] == {"parent": "NotFound", "code": None, "reasons": ["KeyNotFound"]}
    assert NODE["NotFound"]["code"] == "NOT_FOUND" and _node_code("KeyVersionDisabled") == "FAILED_PRECONDITION"
    assert len(NODE) > len(SERVER)


@pytest.mark.parametrize("reason", sorted(SERVER))
def test_the_node_sdk_has_the_class_of_every_server_condition(reason):
    name = NODE_BY_REASON.get(FOLDED.get(reason, reason))
    assert name is not None, f"clients/node/src/errors.ts registers no class for {reason} (add one line)"
    assert reason in FOLDED or name == reason
    assert _node_code(name) == SERVER[reason].code
    assert name in NODE_EXPORTS, f"clients/node/src/index.ts does not export {name}"
    parent = _server_parent(SERVER[reason])
    if reason not in FOLDED and parent is not server.KmsError:
        assert NODE[name]["parent"] == parent.__name__, f"{reason} extends {NODE[name]['parent']} in errors.ts"


# -- where conditions are defined, and what they are called -----------------------------------


@functools.cache
def _class_definitions() -> list[tuple[Path, ast.ClassDef]]:
    found = []
    for path in sorted((ROOT / "kms").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found.extend((path.relative_to(ROOT), node) for node in ast.walk(tree) if isinstance(node, ast.ClassDef))
    return found


def _base_names(node: ast.ClassDef) -> set[str]:
    return {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}


def test_no_condition_a_client_can_see_is_defined_outside_kms_errors():
    reported = {"KmsError", *SERVER}
    elsewhere = [
        f"{path}: {node.name}"
        for path, node in _class_definitions()
        if path != Path("kms/errors.py") and _base_names(node) & reported
    ]
    assert not elsewhere, "KmsError subclasses belong in kms/errors.py"


def test_each_condition_is_defined_once():
    names = [node.name for path, node in _class_definitions() if path == Path("kms/errors.py")]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []  # a second one would shadow the first


def test_no_exception_under_kms_is_named_error():
    suffixed = [
        f"{path}: {node.name}"
        for path, node in _class_definitions()
        if node.name.endswith("Error") and node.name != "KmsError"  # the root, not a condition
    ]
    assert not suffixed, "name exceptions by their condition (ModuleUnusable, not ModuleError)"
    named = [path for path in (ROOT / "kms").rglob("*.py") if re.search(r"\bInternalError\b", path.read_text())]
    assert not named, "the service's class is Internal"
