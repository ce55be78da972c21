"""The registry file: Azure ML v2 datastore YAML parsing, validation, permissions, atomic saves."""

from __future__ import annotations

import os
import re
import stat
import textwrap
from pathlib import Path

import pytest
import yaml

from amlfs.errors import AmlfsError, RegistryError, UsageError
from amlfs.registry import (
    ADLS,
    BLOB,
    FILE,
    LOCAL,
    Credentials,
    DatastoreConfig,
    Registry,
    datastore_to_dict,
    default_local_root,
    load_datastore_yaml,
    parse_datastore,
    resolve_registry_path,
)

# Distinctive fake secrets: no test output may ever contain them.
KEY = "FAKEKEYc2VjcmV0a2V5LXNob3VsZC1uZXZlci1sZWFr=="
SAS = "sv=2022-11-02&ss=b&srt=co&sp=rl&se=2030-01-01&sig=FAKESIGsecretsignature%3D"
SECRET = "FAKECLIENTSECRET~never.leak"
CS_KEY = "FAKECSKEYbm90LWEtcmVhbC1rZXk="
CS = f"DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey={CS_KEY};EndpointSuffix=core.windows.net"
ALL_SECRETS = (KEY, SAS, "FAKESIGsecretsignature", SECRET, CS_KEY)

# The datastore YAMLs of Azure/azureml-examples, cli/resources/datastore/, byte for byte (their
# secrets are placeholders already).
AZUREML_EXAMPLES = {
    "blob.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json
name: blob_example
type: azure_blob
description: Datastore pointing to a blob container.
account_name: mytestblobstore
container_name: data-container
credentials:
  account_key: XXXxxxXXXxXXXXxxXXXXXxXXXXXxXxxXxXXXxXXXxXXxxxXXxxXXXxXxXXXxxXxxXXXXxxxxxXXxxxxxxXXXxXXX""",
    "blob-sas.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json
name: blob_sas_example
type: azure_blob
description: Datastore pointing to a blob container using SAS token.
account_name: mytestblobstore
container_name: data-container
credentials:
  sas_token: ?xx=XXXX-XX-XX&xx=xxxx&xxx=xxx&xx=xxxxxxxxxxx&xx=XXXX-XX-XXXXX:XX:XXX&xx=XXXX-XX-XXXXX:XX:XXX&xxx=xxxxx&xxx=XXxXXXxxxxxXXXXXXXxXxxxXXXXXxxXXXXXxXXXXxXXXxXXxXX""",
    "blob-credless.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json
name: blob_credless_example
type: azure_blob
description: Credential-less datastore pointing to a blob container.
account_name: mytestblobstore
container_name: data-container""",
    "blob-protocol.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json
name: blob_protocol_example
type: azure_blob
description: Datastore pointing to a blob container using wasbs protocol.
account_name: mytestblobstore
protocol: wasbs
container_name: data-container
credentials:
  account_key: XXXxxxXXXxXXXXxxXXXXXxXXXXXxXxxXxXXXxXXXxXXxxxXXxxXXXxXxXXXxxXxxXXXXxxxxxXXxxxxxxXXXxXXX""",
    "file.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureFile.schema.json
name: file_example
type: azure_file
description: Datastore pointing to an Azure File Share.
account_name: mytestfilestore
file_share_name: my-share
credentials:
  account_key: XxXxXxXXXXXXXxXxXxxXxxXXXXXXXXxXxxXXxXXXXXXXxxxXxXXxXXXXXxXXxXXXxXxXxxxXXxXXxXXXXXxXxxXX""",
    "file-sas.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureFile.schema.json
name: file_sas_example
type: azure_file
description: Datastore pointing to an Azure File Share using SAS token.
account_name: mytestfilestore
file_share_name: my-share
credentials:
  sas_token: ?xx=XXXX-XX-XX&xx=xxxx&xxx=xxx&xx=xxxxxxxxxxx&xx=XXXX-XX-XXXXX:XX:XXX&xx=XXXX-XX-XXXXX:XX:XXX&xxx=xxxxx&xxx=XXxXXXxxxxxXXXXXXXxXxxxXXXXXxxXXXXXxXXXXxXXXxXXxXX""",
    "files.yml": """\
name: myfiledatastore
type: azure_file
description: Datastore pointing to an Azure File Share.
account_name: mytestfilestore
file_share_name: my-share
credentials:
  account_key: XxXxXxXXXXXXXxXxXxxXxxXXXXXXXXxXxxXXxXXXXXXXxxxXxXXxXXXXXxXXxXXXxXxXxxxXXxXXxXXXXXxXxxXX""",
    "adls-gen2.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureDataLakeGen2.schema.json
name: adls_gen2_example
type: azure_data_lake_gen2
description: Datastore pointing to an Azure Data Lake Storage Gen2.
account_name: mytestdatalakegen2
filesystem: my-gen2-container
credentials:
  tenant_id: XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX
  client_id: XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX
  client_secret: XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX""",
    "adls-gen2-credless.yml": """\
$schema: https://azuremlschemas.azureedge.net/latest/azureDataLakeGen2.schema.json
name: adls_gen2_credless_example
type: azure_data_lake_gen2
description: Credential-less datastore pointing to an Azure Data Lake Storage Gen2.
account_name: mytestdatalakegen2
filesystem: my-gen2-container
""",
}

# (file, type, account, container field and value, credential fields set)
EXPECTED = {
    "blob.yml": (BLOB, "mytestblobstore", "container_name", "data-container", {"account_key"}),
    "blob-sas.yml": (BLOB, "mytestblobstore", "container_name", "data-container", {"sas_token"}),
    "blob-credless.yml": (BLOB, "mytestblobstore", "container_name", "data-container", set()),
    "blob-protocol.yml": (
        BLOB,
        "mytestblobstore",
        "container_name",
        "data-container",
        {"account_key"},
    ),
    "file.yml": (FILE, "mytestfilestore", "file_share_name", "my-share", {"account_key"}),
    "file-sas.yml": (FILE, "mytestfilestore", "file_share_name", "my-share", {"sas_token"}),
    "files.yml": (FILE, "mytestfilestore", "file_share_name", "my-share", {"account_key"}),
    "adls-gen2.yml": (
        ADLS,
        "mytestdatalakegen2",
        "filesystem",
        "my-gen2-container",
        {"tenant_id", "client_id", "client_secret"},
    ),
    "adls-gen2-credless.yml": (
        ADLS,
        "mytestdatalakegen2",
        "filesystem",
        "my-gen2-container",
        set(),
    ),
}


@pytest.fixture
def reg_path(tmp_path) -> Path:
    return tmp_path / "cfg" / "amlfs" / "datastores.yaml"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def one_datastore_file(reg_path: Path, body: str) -> Path:
    """A registry file holding one datastore whose YAML mapping is `body`."""
    indented = textwrap.indent(textwrap.dedent(body).strip(), "    ")
    return write(reg_path, "datastores:\n  -\n" + indented + "\n")


def every_datastore() -> list[DatastoreConfig]:
    return [
        DatastoreConfig(name="loc", type=LOCAL, path="/data/loc", description="local dir"),
        DatastoreConfig(
            name="key_blob",
            type=BLOB,
            account_name="acct1",
            container_name="c1",
            credentials=Credentials(account_key=KEY),
        ),
        DatastoreConfig(
            name="sas_file",
            type=FILE,
            account_name="acct1",
            file_share_name="share",
            endpoint="core.chinacloudapi.cn",
            credentials=Credentials(sas_token=SAS),
        ),
        DatastoreConfig(
            name="sp_adls",
            type=ADLS,
            account_name="acct1",
            filesystem="fs",
            credentials=Credentials(
                tenant_id="t",
                client_id="c",
                client_secret=SECRET,
                authority_url="https://login.microsoftonline.com",
                resource_url="https://storage.azure.com/",
            ),
        ),
        DatastoreConfig(
            name="cs_blob",
            type=BLOB,
            container_name="c2",
            credentials=Credentials(connection_string=CS),
        ),
        DatastoreConfig(
            name="emulator",
            type=BLOB,
            account_name="devstoreaccount1",
            container_name="c3",
            account_url="http://127.0.0.1:10000/devstoreaccount1",
            protocol="http",
        ),
    ]


def assert_no_secret(text: str) -> None:
    for s in ALL_SECRETS:
        assert s not in text


# --- locations of files ---------------------------------------------------------------------------


def test_registry_path_resolution(tmp_path, monkeypatch):
    assert resolve_registry_path(str(tmp_path / "x.yaml")) == tmp_path / "x.yaml"
    assert resolve_registry_path("~/r.yaml") == Path(os.environ["HOME"]) / "r.yaml"
    xdg = Path(os.environ["XDG_CONFIG_HOME"])
    assert resolve_registry_path() == xdg / "amlfs" / "datastores.yaml"
    monkeypatch.setenv("AMLFS_REGISTRY", str(tmp_path / "env.yaml"))
    assert resolve_registry_path() == tmp_path / "env.yaml"
    assert resolve_registry_path(str(tmp_path / "arg.yaml")) == tmp_path / "arg.yaml"
    monkeypatch.delenv("AMLFS_REGISTRY")
    # A relative XDG value is invalid by the spec and ignored.
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    assert resolve_registry_path() == Path(os.environ["HOME"]) / ".config/amlfs/datastores.yaml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert resolve_registry_path() == Path(os.environ["HOME"]) / ".config/amlfs/datastores.yaml"


def test_default_local_root(monkeypatch):
    data = Path(os.environ["XDG_DATA_HOME"])
    assert default_local_root() == data / "amlfs" / "workspaceblobstore"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert (
        default_local_root() == Path(os.environ["HOME"]) / ".local/share/amlfs/workspaceblobstore"
    )


# --- the default registry and round trips ----------------------------------------------------------


def test_missing_file_gives_default_registry_not_written(reg_path):
    reg = Registry.load(str(reg_path))
    assert reg.path == reg_path
    assert list(reg.datastores) == ["workspaceblobstore"]
    assert reg.default == "workspaceblobstore"
    ds = reg.default_datastore()
    assert ds.type == LOCAL and ds.path == str(default_local_root())
    assert not reg_path.exists() and not reg_path.parent.exists()
    assert not default_local_root().exists()  # created by the backend on first use, not here


def test_default_path_used_when_none_given():
    reg = Registry.load()
    assert reg.path == Path(os.environ["XDG_CONFIG_HOME"]) / "amlfs" / "datastores.yaml"


def test_save_load_round_trip(reg_path):
    reg = Registry.load(str(reg_path))
    for ds in every_datastore():
        reg.add(ds)
    reg.set_default("sp_adls")
    reg.save()
    again = Registry.load(str(reg_path))
    assert again == reg
    assert list(again.datastores) == ["workspaceblobstore", *(d.name for d in every_datastore())]
    assert again.default == "sp_adls"
    for ds in every_datastore():
        assert again.get(ds.name) == ds
    # Saving what was loaded changes nothing.
    before = reg_path.read_bytes()
    again.save()
    assert reg_path.read_bytes() == before


def test_saved_file_is_v2_yaml(reg_path):
    reg = Registry.load(str(reg_path))
    reg.add(every_datastore()[1], make_default=True)
    reg.save()
    doc = yaml.safe_load(reg_path.read_text())
    assert doc["default_datastore"] == "key_blob"
    assert doc["datastores"][1] == {
        "name": "key_blob",
        "type": "azure_blob",
        "account_name": "acct1",
        "container_name": "c1",
        "credentials": {"account_key": KEY},
    }


def test_save_modes(reg_path):
    reg = Registry.load(str(reg_path))
    reg.save()
    assert stat.S_IMODE(reg_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(reg_path.parent.stat().st_mode) == 0o700
    # An existing file that was too open comes back 0600; an existing directory is left alone.
    os.chmod(reg_path, 0o644)
    os.chmod(reg_path.parent, 0o755)
    reg.save()
    assert stat.S_IMODE(reg_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(reg_path.parent.stat().st_mode) == 0o755


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_save_is_atomic(reg_path, monkeypatch, failing):
    reg = Registry.load(str(reg_path))
    reg.save()
    before = reg_path.read_bytes()
    reg.add(every_datastore()[1])

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(AmlfsError) as exc:
        reg.save()
    monkeypatch.undo()
    assert str(exc.value) == f"cannot write registry {reg_path}: No space left on device"
    assert reg_path.read_bytes() == before
    assert os.listdir(reg_path.parent) == [reg_path.name]  # no temp file left behind


def test_save_through_symlink_keeps_link(tmp_path):
    target = write(tmp_path / "dotfiles" / "datastores.yaml", "datastores: []\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    reg = Registry.load(str(link))
    reg.add(every_datastore()[1])
    reg.save()
    assert link.is_symlink()
    assert "key_blob" in Registry.load(str(target)).datastores


def test_save_failure_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    reg = Registry(blocker / "sub" / "r.yaml", {"loc": every_datastore()[0]}, "loc")
    with pytest.raises(AmlfsError) as exc:
        reg.save()
    assert str(exc.value) == f"cannot write registry {reg.path}: Not a directory"
    assert exc.value.exit_code == 1


# --- permissions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_open_file_with_secrets(reg_path, mode):
    reg = Registry.load(str(reg_path))
    reg.add(every_datastore()[1])
    reg.save()
    os.chmod(reg_path, mode)
    with pytest.raises(RegistryError) as exc:
        Registry.load(str(reg_path))
    assert str(exc.value) == (
        f"permissions {mode:04o} for '{reg_path}' are too open: it holds secrets; "
        f"run: chmod 600 {reg_path}"
    )
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    "creds, refused",
    [
        ({"account_key": KEY}, True),
        ({"sas_token": SAS}, True),
        ({"tenant_id": "t", "client_id": "c", "client_secret": SECRET}, True),
        ({"connection_string": CS}, True),
        (
            {
                "connection_string": "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sig=x"
            },
            True,
        ),
        ({"connection_string": "UseDevelopmentStorage=true"}, False),
        ({}, False),
    ],
)
def test_open_file_refused_only_with_secrets(reg_path, creds, refused):
    body = {"name": "ds", "type": "azure_blob", "account_name": "acct1", "container_name": "c"}
    if creds:
        body["credentials"] = creds
    write(reg_path, yaml.safe_dump({"datastores": [body]}), mode=0o644)
    if refused:
        with pytest.raises(RegistryError, match="too open"):
            Registry.load(str(reg_path))
    else:
        assert Registry.load(str(reg_path)).get("ds").credentials == Credentials(**creds)


# --- the azureml-examples YAMLs -------------------------------------------------------------------


@pytest.mark.parametrize("filename", sorted(AZUREML_EXAMPLES))
def test_azureml_examples_parse_unchanged(tmp_path, filename):
    path = tmp_path / filename
    path.write_text(AZUREML_EXAMPLES[filename])
    ds = load_datastore_yaml(str(path))
    ds_type, account, container_field, container, cred_fields = EXPECTED[filename]
    assert ds.name == yaml.safe_load(AZUREML_EXAMPLES[filename])["name"]
    assert (ds.type, ds.account_name, getattr(ds, container_field)) == (ds_type, account, container)
    assert {k for k, v in vars(ds.credentials).items() if v} == cred_fields
    assert ds.endpoint == "core.windows.net" and ds.protocol == "https"
    assert ds.description
    # It round-trips through the registry form.
    assert parse_datastore(datastore_to_dict(ds), "x") == ds


def test_azureml_examples_in_one_registry(reg_path):
    docs = [yaml.safe_load(text) for text in AZUREML_EXAMPLES.values()]
    write(reg_path, yaml.safe_dump({"default_datastore": "file_example", "datastores": docs}))
    reg = Registry.load(str(reg_path))
    assert list(reg.datastores) == [d["name"] for d in docs]
    assert reg.default_datastore().file_share_name == "my-share"


def test_sas_leading_question_mark_stripped_and_wasbs_means_https(tmp_path):
    p = tmp_path / "b.yml"
    p.write_text(AZUREML_EXAMPLES["blob-sas.yml"])
    assert load_datastore_yaml(str(p)).credentials.sas_token.startswith("xx=XXXX")
    p.write_text(AZUREML_EXAMPLES["blob-protocol.yml"])
    assert load_datastore_yaml(str(p)).protocol == "https"
    p.write_text(AZUREML_EXAMPLES["blob-protocol.yml"].replace("wasbs", "wasb"))
    assert load_datastore_yaml(str(p)).protocol == "http"


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "name: adls_gen1\ntype: azure_data_lake_gen1\nstore_name: s\n",
            "field 'type' 'azure_data_lake_gen1' is not supported by amlfs",
        ),
        ("name: ol\ntype: one_lake\n", "field 'type' 'one_lake' is not supported by amlfs"),
        # The older azureml-examples used hyphens, which Azure ML rejects.
        (
            AZUREML_EXAMPLES["blob.yml"].replace("blob_example", "blob-example"),
            "datastore 'blob-example': field 'name' must be 1-255 letters, digits or underscores",
        ),
    ],
)
def test_unsupported_examples_are_clear_errors(tmp_path, text, fragment):
    p = tmp_path / "ds.yml"
    p.write_text(text)
    with pytest.raises(RegistryError) as exc:
        load_datastore_yaml(str(p))
    assert str(exc.value).startswith(f"{p}: datastore ")
    assert fragment in str(exc.value)


def test_v2_extras_are_tolerated_and_type_casing(tmp_path):
    p = write(
        tmp_path / "ds.yml",
        """\
        $schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json
        id: /subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/datastores/shown
        name: shown
        type: AzureBlob
        tags: {team: ml}
        properties: {}
        resource_group: r
        subscription_id: s
        serviceDataAccessAuthIdentity: None
        account_name: acct1
        container_name: c
        endpoint: core.windows.net
        protocol: https
        credentials: {}
        """,
    )
    assert load_datastore_yaml(str(p)) == DatastoreConfig(
        name="shown", type=BLOB, account_name="acct1", container_name="c"
    )


def test_authority_uri_alias(tmp_path):
    p = write(
        tmp_path / "sp.yml",
        f"""\
        name: sp
        type: azure_data_lake_gen2
        account_name: acct1
        filesystem: fs
        credentials:
          tenant_id: t
          client_id: c
          client_secret: {SECRET}
          authority_uri: https://login.microsoftonline.us
        """,
    )
    ds = load_datastore_yaml(str(p))
    assert ds.credentials.authority_url == "https://login.microsoftonline.us"
    assert (
        datastore_to_dict(ds)["credentials"]["authority_url"] == "https://login.microsoftonline.us"
    )
    assert "authority_uri" not in datastore_to_dict(ds)["credentials"]


def test_load_datastore_yaml_errors(tmp_path):
    with pytest.raises(RegistryError, match=r"nope\.yml: no such file$"):
        load_datastore_yaml(str(tmp_path / "nope.yml"))
    p = write(tmp_path / "list.yml", "- a\n- b\n")
    with pytest.raises(RegistryError, match="expected a datastore mapping"):
        load_datastore_yaml(str(p))


# --- validation -------------------------------------------------------------------------------------

BLOB_OK = "type: azure_blob\naccount_name: acct1\ncontainer_name: c\n"

# (datastore body, datastore label in the message, field, the rest of the message)
# fmt: off
INVALID = [
    ("name: foo\ntype: azure_blob\naccount_name: acct1\n", "'foo'", "container_name", "is required for type azure_blob"),
    ("name: f\ntype: azure_file\naccount_name: acct1\n", "'f'", "file_share_name", "is required for type azure_file"),
    ("name: a\ntype: azure_data_lake_gen2\naccount_name: acct1\n", "'a'", "filesystem", "is required for type azure_data_lake_gen2"),
    ("name: l\ntype: local\n", "'l'", "path", "is required for type local"),
    ("name: l\ntype: local\npath: rel/dir\n", "'l'", "path", "must be an absolute path"),
    ("name: b\ntype: azure_blob\ncontainer_name: c\n", "'b'", "account_name", "is required for type azure_blob (unless account_url or a connection string gives the account)"),
    ("name: b\ntype: azure_blob\naccount_name: Bad_Acct\ncontainer_name: c\n", "'b'", "account_name", "must be 3-24 lower-case letters or digits (a storage account name)"),
    ("type: azure_blob\n", "#1", "name", "is required"),
    ("name: 12\n" + BLOB_OK, "#1", "name", "must be a string, not int"),
    ("name: my-store\n" + BLOB_OK, "'my-store'", "name", "must be 1-255 letters, digits or underscores (Azure ML datastore names)"),
    ("name: " + "n" * 256 + "\n" + BLOB_OK, "'" + "n" * 256 + "'", "name", "must be 1-255 letters, digits or underscores (Azure ML datastore names)"),
    ("name: b\naccount_name: acct1\ncontainer_name: c\n", "'b'", "type", "is required (one of: azure_blob, azure_file, azure_data_lake_gen2, local)"),
    ("name: b\ntype: azure_blobs\naccount_name: acct1\ncontainer_name: c\n", "'b'", "type", "has unknown value 'azure_blobs' (one of: azure_blob, azure_file, azure_data_lake_gen2, local); did you mean 'azure_blob'?"),
    ("name: b\n" + BLOB_OK + "contianer_name: d\n", "'b'", "contianer_name", "is not a known field; did you mean 'container_name'?"),
    ("name: b\n" + BLOB_OK + "zzz: 1\n", "'b'", "zzz", "is not a known field"),
    ("name: b\n" + BLOB_OK + "file_share_name: s\n", "'b'", "file_share_name", "does not apply to type azure_blob (it takes 'container_name')"),
    ("name: b\n" + BLOB_OK + "path: /x\n", "'b'", "path", "does not apply to type azure_blob (only to local)"),
    ("name: l\ntype: local\npath: /x\naccount_name: acct1\n", "'l'", "account_name", "does not apply to type local"),
    ("name: l\ntype: local\npath: /x\nprotocol: http\n", "'l'", "protocol", "does not apply to type local"),
    (f"name: l\ntype: local\npath: /x\ncredentials: {{account_key: {KEY}}}\n", "'l'", "credentials", "does not apply to type local"),
    ("name: b\n" + BLOB_OK + "container_name: c\n", None, None, "duplicate key 'container_name'"),
    ("name: b\n" + BLOB_OK + "credentials: [a]\n", "'b'", "credentials", "must be a mapping"),
    (f"name: b\n{BLOB_OK}credentials:\n  account_key: {KEY}\n  sas_token: {SAS}\n", "'b'", "credentials", "may hold only one credential form, found: account_key, sas_token"),
    (f"name: b\n{BLOB_OK}credentials:\n  account_key: {KEY}\n  connection_string: '{CS}'\n", "'b'", "credentials", "may hold only one credential form, found: account_key, connection_string"),
    (f"name: b\n{BLOB_OK}credentials:\n  tenant_id: t\n  client_id: c\n", "'b'", "credentials.client_secret", "is required for a service principal (tenant_id, client_id, client_secret)"),
    (f"name: b\n{BLOB_OK}credentials:\n  client_secret: {SECRET}\n", "'b'", "credentials.tenant_id", "is required for a service principal (tenant_id, client_id, client_secret)"),
    (f"name: b\n{BLOB_OK}credentials:\n  account_key: {KEY}\n  authority_url: https://login\n", "'b'", "credentials.authority_url", "is only used with a service principal (tenant_id, client_id, client_secret)"),
    (f"name: b\n{BLOB_OK}credentials:\n  acount_key: {KEY}\n", "'b'", "credentials.acount_key", "is not a known field; did you mean 'account_key'?"),
    ("name: b\n" + BLOB_OK + "credentials:\n  tenant_id: t\n  client_id: c\n  thumbprint: x\n", "'b'", "credentials.thumbprint", "is not supported (certificate credentials); use a client secret"),
    (f"name: b\n{BLOB_OK}credentials:\n  tenant_id: t\n  client_id: c\n  client_secret: {SECRET}\n  authority_url: u\n  authority_uri: u\n", "'b'", "credentials.authority_uri", "and 'authority_url' are the same field: give one"),
    ("name: b\n" + BLOB_OK + "credentials:\n  account_key: 12345\n", "'b'", "credentials.account_key", "must be a string, not int"),
    ("name: b\n" + BLOB_OK + "credentials:\n  account_key: ''\n", "'b'", "credentials.account_key", "must not be empty"),
    ("name: b\n" + BLOB_OK + "credentials:\n  sas_token: '?'\n", "'b'", "credentials.sas_token", "must not be empty"),
    (f"name: b\n{BLOB_OK}credentials:\n  connection_string: {KEY}\n", "'b'", "credentials.connection_string", "is not a storage connection string (Key=Value;... pairs of known keys)"),
    (f"name: b\n{BLOB_OK}credentials:\n  connection_string: AccountName=a;AcountKey={CS_KEY}\n", "'b'", "credentials.connection_string", "is not a storage connection string (Key=Value;... pairs of known keys)"),
    (f"name: b\n{BLOB_OK}account_url: https://acct1.blob.core.windows.net/?{SAS}\n", "'b'", "account_url", "must not carry a query string or user info; put a SAS in credentials.sas_token"),
    ("name: b\n" + BLOB_OK + "account_url: ftp://host/\n", "'b'", "account_url", "must be an http:// or https:// URL with a host"),
    ("name: b\n" + BLOB_OK + "account_url: http://host:99999/\n", "'b'", "account_url", "is not a valid URL"),
    ("name: b\n" + BLOB_OK + "endpoint: https://core.windows.net\n", "'b'", "endpoint", "must be a DNS suffix such as core.windows.net (a full URL goes in account_url)"),
    ("name: b\n" + BLOB_OK + "protocol: ftp\n", "'b'", "protocol", "must be one of: https, http, wasbs, wasb, abfss"),
    ("name: b\n" + BLOB_OK + "description: [1]\n", "'b'", "description", "must be a string"),
    ("name: b\n" + BLOB_OK.replace("container_name: c", "container_name: a/b"), "'b'", "container_name", "must be a single name without '/'"),
]
# fmt: on


@pytest.mark.parametrize("body, label, fieldname, rest", INVALID)
def test_validation_errors_name_file_datastore_field(reg_path, body, label, fieldname, rest):
    path = one_datastore_file(reg_path, body)
    with pytest.raises(RegistryError) as exc:
        Registry.load(str(path))
    msg = str(exc.value)
    if label is None:  # a YAML-level error: file and line instead of the datastore
        assert re.fullmatch(
            rf"{re.escape(str(path))}: line \d+, column \d+: invalid YAML: {rest}", msg
        )
    else:
        assert msg == f"{path}: datastore {label}: field {fieldname!r} {rest}"
    assert "\n" not in msg
    assert_no_secret(msg)
    assert exc.value.exit_code == 2


def test_the_brief_example_message(tmp_path):
    path = tmp_path / "home/u/.config/amlfs/datastores.yaml"
    one_datastore_file(path, "name: foo\ntype: azure_blob\naccount_name: acct1\n")
    with pytest.raises(RegistryError) as exc:
        Registry.load(str(path))
    assert str(exc.value) == (
        f"{path}: datastore 'foo': field 'container_name' is required for type azure_blob"
    )


def test_account_may_come_from_url_or_connection_string():
    src = "x"
    for extra in (
        {"account_url": "http://127.0.0.1:10000/devstoreaccount1"},
        {"credentials": {"connection_string": "UseDevelopmentStorage=true"}},
        {"credentials": {"connection_string": CS}},
        {"credentials": {"connection_string": "BlobEndpoint=https://h/;SharedAccessSignature=s"}},
    ):
        ds = parse_datastore(
            {"name": "b", "type": "azure_blob", "container_name": "c", **extra}, src
        )
        assert ds.account_name is None


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "datastores:\n  - name: [unclosed\n",
            "line 3, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        (
            "datastores: {\n",
            "line 2, column 1: invalid YAML: expected the node content, but found '<stream end>'",
        ),
        (
            "default_datastore: a\ndefault_datastore: b\n",
            "line 2, column 1: invalid YAML: duplicate key 'default_datastore'",
        ),
        ("- just\n- a list\n", "expected a mapping with 'default_datastore' and 'datastores'"),
        ("datastore: []\n", "unknown top-level key 'datastore'; did you mean 'datastores'?"),
        ("datastores: {name: x}\n", "'datastores' must be a list of datastore mappings"),
        ("datastores: [7]\n", "datastore #1: must be a mapping of fields"),
        (
            "default_datastore: nope\ndatastores: [{name: l, type: local, path: /x}]\n",
            "default_datastore 'nope' is not one of the datastores (known: l)",
        ),
        (
            "datastores: [{name: l, type: local, path: /x}, {name: l, type: local, path: /y}]\n",
            "datastore 'l': field 'name' is used by two datastores",
        ),
    ],
)
def test_file_level_errors_are_one_line(reg_path, text, message):
    write(reg_path, text)
    with pytest.raises(RegistryError) as exc:
        Registry.load(str(reg_path))
    assert str(exc.value) == f"{reg_path}: {message}"


def test_yaml_error_does_not_show_the_line(reg_path):
    write(reg_path, f"datastores:\n  - name: b\n    credentials: {{account_key: {KEY}\n")
    with pytest.raises(RegistryError) as exc:
        Registry.load(str(reg_path))
    assert "invalid YAML" in str(exc.value)
    assert_no_secret(str(exc.value))


def test_unreadable_files(reg_path, tmp_path):
    reg_path.mkdir(parents=True)
    with pytest.raises(RegistryError, match=r"is a directory, not a YAML file$"):
        Registry.load(str(reg_path))
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"datastores: \xff\xfe\n")
    with pytest.raises(RegistryError, match=r"bin\.yaml: not valid UTF-8 text$"):
        Registry.load(str(bad))
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(
        RegistryError, match=r"^cannot read .*dangling\.yaml: No such file or directory$"
    ):
        Registry.load(str(dangling))


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "datastores: []\n", "datastores:\n"])
def test_empty_registry_file_holds_the_embedded_default(reg_path, text):
    write(reg_path, text)
    reg = Registry.load(str(reg_path))
    assert reg.default == "workspaceblobstore"
    assert reg.default_datastore().type == LOCAL


def test_default_when_not_named(reg_path):
    write(
        reg_path,
        "datastores: [{name: l, type: local, path: /x}, {name: m, type: local, path: /y}]\n",
    )
    assert Registry.load(str(reg_path)).default == "l"


# --- the Registry API -------------------------------------------------------------------------------


def test_get_unknown(reg_path):
    reg = Registry.load(str(reg_path))
    reg.add(every_datastore()[0])
    with pytest.raises(UsageError) as exc:
        reg.get("x")
    assert str(exc.value) == f"unknown datastore 'x' in {reg_path} (known: workspaceblobstore, loc)"
    assert exc.value.exit_code == 2


def test_add_overwrite_and_default(reg_path):
    reg = Registry.load(str(reg_path))
    loc, blob = every_datastore()[:2]
    reg.add(loc)
    with pytest.raises(UsageError) as exc:
        reg.add(loc)
    assert str(exc.value) == (
        f"datastore 'loc' already exists in {reg_path}; use --overwrite to replace it"
    )
    moved = DatastoreConfig(name="loc", type=LOCAL, path="/elsewhere")
    reg.add(blob)
    reg.add(moved, overwrite=True, make_default=True)
    assert list(reg.datastores) == ["workspaceblobstore", "loc", "key_blob"]  # order kept
    assert reg.get("loc").path == "/elsewhere"
    assert reg.default == "loc" and reg.default_datastore() is reg.get("loc")


def test_add_validates_and_normalises(reg_path):
    reg = Registry.load(str(reg_path))
    with pytest.raises(RegistryError) as exc:
        reg.add(DatastoreConfig(name="b", type=BLOB, account_name="acct1"))
    assert str(exc.value) == (
        f"{reg_path}: datastore 'b': field 'container_name' is required for type azure_blob"
    )
    with pytest.raises(RegistryError, match="field 'name' must be 1-255"):
        reg.add(DatastoreConfig(name="a b", type=LOCAL, path="/x"))
    assert list(reg.datastores) == ["workspaceblobstore"]
    reg.add(
        DatastoreConfig(
            name="s",
            type=BLOB,
            account_name="acct1",
            container_name="c",
            protocol="wasbs",
            credentials=Credentials(sas_token="?" + SAS),
        )
    )
    assert reg.get("s").credentials.sas_token == SAS
    assert reg.get("s").protocol == "https"


def test_remove_and_set_default(reg_path):
    reg = Registry.load(str(reg_path))
    with pytest.raises(UsageError) as exc:
        reg.remove("workspaceblobstore")
    assert str(exc.value) == (
        "cannot remove datastore 'workspaceblobstore': it is the default; "
        "register another datastore and make it the default first"
    )
    reg.add(every_datastore()[0])
    with pytest.raises(UsageError, match="make another one the default first"):
        reg.remove("workspaceblobstore")
    with pytest.raises(UsageError, match="unknown datastore 'nope'"):
        reg.set_default("nope")
    with pytest.raises(UsageError, match="unknown datastore 'nope'"):
        reg.remove("nope")
    reg.set_default("loc")
    reg.remove("workspaceblobstore")
    reg.save()
    again = Registry.load(str(reg_path))
    assert list(again.datastores) == ["loc"] and again.default == "loc"


# --- secrets never shown ------------------------------------------------------------------------------


def test_redaction_everywhere(reg_path):
    reg = Registry.load(str(reg_path))
    for ds in every_datastore():
        reg.add(ds)
    shown = [repr(reg), str(reg)]
    for ds in reg.datastores.values():
        shown += [repr(ds), repr(ds.credentials), str(datastore_to_dict(ds, redact=True))]
        shown.append(yaml.safe_dump(datastore_to_dict(ds, redact=True)))
    for text in shown:
        assert_no_secret(text)
    red = datastore_to_dict(reg.get("cs_blob"), redact=True)["credentials"]["connection_string"]
    assert red == (
        "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=***;"
        "EndpointSuffix=core.windows.net"
    )
    assert datastore_to_dict(reg.get("key_blob"), redact=True)["credentials"] == {
        "account_key": "***"
    }
    sp = datastore_to_dict(reg.get("sp_adls"), redact=True)["credentials"]
    assert sp["client_secret"] == "***" and sp["tenant_id"] == "t"
    assert "Credentials(account_key='***')" in repr(reg.get("key_blob"))
    # Without redact the secrets are there (that is what save() writes).
    assert datastore_to_dict(reg.get("key_blob"))["credentials"]["account_key"] == KEY


def test_redaction_of_odd_values():
    weird = Credentials(connection_string=KEY)  # not Key=Value pairs: hidden entirely
    assert KEY not in repr(weird)
    assert weird.to_dict(redact=True) == {"connection_string": "***"}
    ds = DatastoreConfig(
        name="u",
        type=BLOB,
        container_name="c",
        account_url=f"https://a.blob.core.windows.net?{SAS}",
    )
    assert_no_secret(repr(ds))
    assert_no_secret(str(datastore_to_dict(ds, redact=True)))


def test_errors_never_show_secrets(reg_path):
    bodies = [
        f"name: b\n{BLOB_OK}credentials:\n  account_key: {KEY}\n  bogus: {SECRET}\n",
        f"name: b\n{BLOB_OK}credentials:\n  account_key: {KEY}\ncontianer: x\n",
        f"name: b\ntype: azure_blob\naccount_name: acct1\ncredentials: {{sas_token: '{SAS}'}}\n",
        f"name: b\n{BLOB_OK}credentials:\n  client_secret: {SECRET}\n",
        f"name: b\n{BLOB_OK}credentials:\n  account_key: {KEY}\n  sas_token: '{SAS}'\n",
        f"name: b\n{BLOB_OK}credentials:\n  connection_string: {CS_KEY}\n",
    ]
    for body in bodies:
        write(reg_path, "")
        one_datastore_file(reg_path, body)
        with pytest.raises(RegistryError) as exc:
            Registry.load(str(reg_path))
        assert_no_secret(str(exc.value))
        assert_no_secret(repr(exc.value))
