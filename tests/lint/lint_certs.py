#!/usr/bin/env python3
"""Run pkilint and the cryptography path verifier on certificates and CRLs.

Usage: lint_certs.py MANIFEST

MANIFEST is a JSON file:

    {"certificates": [{"name": "...", "path": "leaf.pem", "kind": "leaf",
                       "profile": "server", "root": "root.pem",
                       "intermediates": ["issuer.pem"],
                       "hostname": "app.example.com"}],
     "crls": [{"name": "...", "path": "crl.der"}]}

`kind` is root, issuer or leaf; `profile`, `root`, `intermediates` and
`hostname` matter only for leaves. The script prints one JSON object that
maps each name to its results:

    {"pkix": [FINDING], "cabf": [FINDING] or null,
     "server_verify": "ok" | ERROR or null,
     "client_verify": "ok" | ERROR or null}

where FINDING is {"code", "severity", "message", "node"} and null means the
check does not apply. Every finding of severity WARNING or higher is
reported; the calling test decides which are failures. pkilint runs through
its command-line entry points in this process, which avoids a second of
interpreter start-up per document.
"""

import contextlib
import io
import json
import sys

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from pkilint.bin import lint_cabf_serverauth_cert, lint_crl, lint_pkix_cert

SEVERITY = "WARNING"


def run_pkilint(main, arguments):
    """Run one pkilint entry point and return its findings as dicts."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        main(["lint", "-f", "JSON", "-s", SEVERITY, *arguments])
    text = output.getvalue().strip()
    if not text:
        return []
    findings = []
    for result in json.loads(text)["results"]:
        for description in result["finding_descriptions"]:
            findings.append(
                {
                    "code": description["code"],
                    "severity": description["severity"],
                    "message": description["message"],
                    "node": result["node_path"],
                }
            )
    return findings


def load_pem(path):
    with open(path, "rb") as file:
        return x509.load_pem_x509_certificate(file.read())


def verify(entry, server):
    """Build the path of a leaf with the cryptography verifier.

    Returns "ok" or the verifier's error message.
    """
    builder = PolicyBuilder().store(Store([load_pem(entry["root"])]))
    leaf = load_pem(entry["path"])
    intermediates = [load_pem(path) for path in entry["intermediates"]]
    try:
        if server:
            verifier = builder.build_server_verifier(x509.DNSName(entry["hostname"]))
        else:
            verifier = builder.build_client_verifier()
        verifier.verify(leaf, intermediates)
    except Exception as error:  # noqa: BLE001 - the message is the result
        return f"{type(error).__name__}: {error}"
    return "ok"


def check_certificate(entry):
    path = entry["path"]
    result = {
        "pkix": run_pkilint(lint_pkix_cert.main, [path]),
        "cabf": None,
        "server_verify": None,
        "client_verify": None,
    }
    if entry["kind"] != "leaf":
        return result
    profile = entry["profile"]
    if profile in ("server", "peer"):
        result["cabf"] = run_pkilint(
            lint_cabf_serverauth_cert.main, ["-t", "DV-FINAL-CERTIFICATE", path]
        )
        result["server_verify"] = verify(entry, server=True)
    if profile in ("client", "peer"):
        result["client_verify"] = verify(entry, server=False)
    return result


def check_crl(entry):
    return {
        "pkix": run_pkilint(lint_crl.main, ["-t", "CRL", "-p", "PKIX", entry["path"]]),
        "cabf": None,
        "server_verify": None,
        "client_verify": None,
    }


def main():
    if len(sys.argv) != 2:
        print("usage: lint_certs.py MANIFEST", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as file:
        manifest = json.load(file)
    report = {}
    for entry in manifest.get("certificates", []):
        report[entry["name"]] = check_certificate(entry)
    for entry in manifest.get("crls", []):
        report[entry["name"]] = check_crl(entry)
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
