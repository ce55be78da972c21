"""Protocol-level test servers for Azure Files and ADLS Gen2 (DFS + the Blob read path), which
Azurite does not serve. The real Azure SDKs talk to them over loopback HTTP(S)."""
