"""FAKES of remote key services for atrest's interop tests.

Each fake is written from the service's public REST documentation (and the
shapes its public SDKs and tests send and expect); none is the real service,
and none is fit for anything but tests. Each runs as its own process
(`python -m fakes.<name> --port 0 ...`), prints one JSON line with its port
when it listens, serves plain HTTP on 127.0.0.1, and is stopped by pid.

* `fakes.azure_key_vault`: Azure Key Vault keys API 7.4, the Microsoft
  identity platform's client-credentials token endpoint, and Azure Resource
  Manager's vault read.
* `fakes.vault_transit`: HashiCorp Vault's transit secrets engine.

Both have control endpoints under `/_fake/` that only tests call (disable a
key, remove access, inject failures...). `fakes.control` starts and drives
them from a test.
"""
