"""The registry file: datastores in the Azure ML v2 datastore YAML schema, and the default one.

(Data model only so far; loading, validation and atomic 0600 saving come next.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

BLOB = "azure_blob"
FILE = "azure_file"
ADLS = "azure_data_lake_gen2"
LOCAL = "local"
TYPES = (BLOB, FILE, ADLS, LOCAL)


@dataclass
class Credentials:
    """One credential form (at most one group set): key, SAS, service principal, or connection
    string. All None means "absent": the environment conventions apply (see credentials.py)."""

    account_key: str | None = None
    sas_token: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    authority_url: str | None = None
    connection_string: str | None = None

    def is_empty(self) -> bool:
        return not any(vars(self).values())


@dataclass
class DatastoreConfig:
    """One datastore, as in an Azure ML v2 datastore YAML (plus our `account_url` and `path`)."""

    name: str
    type: str
    description: str | None = None
    account_name: str | None = None
    container_name: str | None = None  # azure_blob
    file_share_name: str | None = None  # azure_file
    filesystem: str | None = None  # azure_data_lake_gen2
    endpoint: str = "core.windows.net"
    protocol: str = "https"
    account_url: str | None = None  # explicit endpoint URL (emulators, private endpoints)
    path: str | None = None  # local
    credentials: Credentials = field(default_factory=Credentials)
