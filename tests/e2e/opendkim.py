"""OpenDKIM 2.11 as an independent DKIM signer and verifier for the tests: `opendkim -t` (its
test mode, the milter's own code path) run from a private directory with a config file of its
own; keys are looked up through `Nameservers` (port 53 only), never /etc/opendkim.conf or the
system's resolver.

API
    from opendkim import OpenDKIM, missing
    reason = missing()                       # None, or why OpenDKIM cannot run here (skip)
    odk = OpenDKIM(tmp_dir, nameserver="127.0.0.153", dns_timeout=3)
    ok, detail = odk.verify(message_bytes)   # ok: signed, and every signature passes
    odk.results(message_bytes)               # [{"result", "reason", "d", "s", "a", "bits"}]
    signed = odk.sign(message_bytes, "example.com", "s1", key_path,
                      canonicalization="relaxed/relaxed", algorithm="rsa-sha256")

Why test mode and not opendkim-testmsg: testmsg resolves keys through the system resolver
(no way to name ours) and in 2.11 signs with rsa-sha1 and a garbled b= tag.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"

# Test mode prints each header field it would add as a Python-like repr:
#   ### INSHEADER: idx=0 hname='DKIM-Signature' hvalue='v=1; a=...'
_INSHEADER_RE = re.compile(r"^### INSHEADER: idx=\d+ hname='([^']*)' hvalue='(.*?)'$", re.MULTILINE | re.DOTALL)
_RESULT_RE = re.compile(r'\bdkim=(\w+)(?:\s+reason="([^"]*)")?(?:\s+\(([^)]*)\))?([^;]*)')
_PROP_RE = re.compile(r"\bheader\.([dsai])=(\S+)")
_BITS_RE = re.compile(r"(\d+)-bit key")


def missing() -> str | None:
    """None when the opendkim binary can run; else why not (for a skip reason)."""
    if not os.access(OPENDKIM, os.X_OK):
        return f"{OPENDKIM} not installed (Debian package opendkim)"
    try:
        p = subprocess.run([OPENDKIM, "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{OPENDKIM} -V failed: {e}"
    if "ed25519-sha256" not in p.stdout:
        return f"{OPENDKIM} lacks ed25519-sha256: {p.stdout.strip()!r}"
    return None


class OpenDKIMError(AssertionError):
    pass


class OpenDKIM:
    """One private working directory; every call writes its config and message there."""

    def __init__(self, workdir: Path, *, nameserver: str = "127.0.0.153", dns_timeout: int = 3):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.nameserver = nameserver
        self.dns_timeout = dns_timeout
        self._n = itertools.count(1)

    # -- verifying -------------------------------------------------------------
    def results(self, message: bytes) -> list[dict]:
        """One entry per DKIM signature, from the Authentication-Results OpenDKIM writes."""
        out, _ = self._verify_raw(message)
        return out

    def verify(self, message: bytes) -> tuple[bool, str]:
        """(True when at least one signature and all pass, OpenDKIM's report)."""
        results, report = self._verify_raw(message)
        ok = bool(results) and all(r["result"] == "pass" for r in results)
        return ok, report

    def _verify_raw(self, message: bytes) -> tuple[list[dict], str]:
        conf = self._conf("verify", [
            "Mode v",
            f"Nameservers {self.nameserver}",
            f"DNSTimeout {self.dns_timeout}",
        ])
        out = self._run(conf, message)
        fields = [v for n, v in self._inserted(out) if n.lower() == "authentication-results"]
        results = []
        for value in fields:
            for m in _RESULT_RE.finditer(value):
                comment, tail = m.group(3) or "", m.group(4) or ""
                props = dict(_PROP_RE.findall(tail))
                bits = _BITS_RE.search(comment)
                results.append({"result": m.group(1), "reason": m.group(2) or "", "comment": comment,
                                "d": props.get("d", ""), "s": props.get("s", ""), "a": props.get("a", ""),
                                "bits": int(bits.group(1)) if bits else None})
        return results, out.strip()

    # -- signing ----------------------------------------------------------------
    def sign(self, message: bytes, domain: str, selector: str, keyfile: str | Path, *,
             canonicalization: str = "relaxed/relaxed", algorithm: str | None = None,
             headers: list[str] | None = None) -> bytes:
        """The message with OpenDKIM's DKIM-Signature on top (CRLF line ends kept). The
        algorithm follows the key unless given: rsa-sha256 or ed25519-sha256."""
        if algorithm is None:
            key = serialization.load_pem_private_key(Path(keyfile).read_bytes(), None)
            algorithm = "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa-sha256"
        lines = [
            "Mode s",
            f"Domain {domain}",
            f"Selector {selector}",
            f"KeyFile {keyfile}",
            f"Canonicalization {canonicalization}",
            f"SignatureAlgorithm {algorithm}",
            "SubDomains yes",
            # pytest's directories sit under /tmp, which OpenDKIM otherwise refuses for keys
            "RequireSafeKeys no",
        ]
        if headers:
            lines.append(f"SignHeaders {','.join(headers)}")
        out = self._run(self._conf("sign", lines), message)
        sigs = [v for n, v in self._inserted(out) if n.lower() == "dkim-signature"]
        if len(sigs) != 1:
            raise OpenDKIMError(f"OpenDKIM added {len(sigs)} signatures:\n{out}")
        # The milter's field is "DKIM-Signature: " + value, its folds "\n\t": what the MTA
        # would write (with CRLF), and what OpenDKIM signed.
        field = b"DKIM-Signature: " + sigs[0].replace("\n", "\r\n").encode() + b"\r\n"
        return field + message

    # -- plumbing ---------------------------------------------------------------
    def _conf(self, kind: str, lines: list[str]) -> Path:
        path = self.dir / f"{kind}-{next(self._n)}.conf"
        path.write_text("\n".join(["Syslog no", "SoftwareHeader no", *lines]) + "\n")
        return path

    def _run(self, conf: Path, message: bytes) -> str:
        msg = conf.with_suffix(".eml")
        msg.write_bytes(message)
        try:
            p = subprocess.run([OPENDKIM, "-x", str(conf), "-t", str(msg), "-vv"],
                               capture_output=True, timeout=self.dns_timeout * 4 + 20, cwd=self.dir, check=False)
        except subprocess.TimeoutExpired as e:
            raise OpenDKIMError(f"opendkim -t did not finish: {e}") from e
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode != 0:
            raise OpenDKIMError(f"opendkim -t exited {p.returncode}:\n{out}\n"
                                f"{p.stderr.decode('utf-8', 'replace')}")
        return out

    @staticmethod
    def _inserted(out: str) -> list[tuple[str, str]]:
        # hvalue is printed verbatim between single quotes; neither field holds a quote
        return [(m.group(1), m.group(2)) for m in _INSHEADER_RE.finditer(out)]
