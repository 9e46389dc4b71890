"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests.

Also a local PACS to try the dashboard against: ``python tests/orthanc.py --port 8042``
starts one with pydicom-data's RG3 radiograph and CT/MR studies in it, prints the settings
to use, and runs until Ctrl-C (storage in a temporary folder, deleted afterwards).

Started on loopback with a temporary configuration: a free HTTP port, the DICOM port off,
storage and index in a temporary folder, the DICOMweb plugin on, HTTP basic auth on, and a
Lua ``ReceivedInstanceFilter`` that refuses SR/DOC objects of patient ``REFUSE-WRITES``
(so a test can watch a PACS refuse a write-back: Orthanc then still answers STOW-RS with
success, which is exactly the case the write-back's re-query must catch).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

USER, PASSWORD = "zoo-test", "pacs-test-secret-81"
REFUSE_PATIENT_ID = "REFUSE-WRITES"
_PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7")
_LUA = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == "{REFUSE_PATIENT_ID}" and (dicom.Modality == "SR" or dicom.Modality == "DOC") then
    return false
  end
  return true
end
"""


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None)


def dicomweb_plugin() -> str | None:
    return next((p for p in _PLUGIN_CANDIDATES if Path(p).is_file()), None)


def missing_reason() -> str | None:
    """Why Orthanc cannot be started here (None when it can)."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc process; ``start()`` waits until its REST API answers, ``stop()`` until it exited."""

    def __init__(self, root: Path, name: str = "ZOOTEST", port: int | None = None) -> None:
        self.root = Path(root)
        self.name = name
        self.fixed_port = port
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def _config(self) -> Path:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.root / "filter.lua").write_text(_LUA, encoding="ascii")
        config = {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "HttpBindAddress": "127.0.0.1",
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [str(self.root / "filter.lua")],
            "HttpTimeout": 10,
            "StableAge": 1,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 8,
            "SaveJobs": False,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        return path

    def start(self, timeout: float = 30.0) -> Orthanc:
        last = ""
        self.root.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a free port can be taken between probe and bind: retry
            self.port = self.fixed_port or free_port()
            log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                [orthanc_binary(), str(self._config())], cwd=self.root, stdout=log, stderr=subprocess.STDOUT
            )
            self._log = log
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            last = self.log_tail()
            self.stop()
        raise RuntimeError(f"Orthanc did not start; log tail:\n{last}")

    def log_tail(self, n: int = 20) -> str:
        path = self.root / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None

    # -- test-side helpers (Orthanc's own REST API, independent of the code under test) ----
    def upload(self, data: bytes) -> dict:
        r = requests.post(f"{self.url}/instances", data=data, auth=(USER, PASSWORD), timeout=30)
        r.raise_for_status()
        return r.json()

    def count(self, study_uid: str, modality: str) -> int:
        r = requests.get(
            f"{self.dicomweb_url}/studies/{study_uid}/instances", params={"Modality": modality}, auth=(USER, PASSWORD), timeout=10
        )
        return 0 if r.status_code == 204 or not r.text.strip() else len(r.json())


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from pydicom.data import get_testdata_file

    parser = argparse.ArgumentParser(description="a local Orthanc (DICOMweb) with sample studies")
    parser.add_argument("--port", type=int, default=8042)
    args = parser.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"error: {reason}")
        return 2

    def _interrupt(signum, frame):  # SIGTERM too: always stop the server and delete its storage
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="zoo-orthanc-") as tmp:
        server = Orthanc(Path(tmp), port=args.port).start()
        try:
            for name in ("RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm"):
                server.upload(Path(get_testdata_file(name)).read_bytes())
            print(
                f"Orthanc on {server.url} with 3 sample studies (RG3 radiograph: patient ID 11RG3). Use:\n"
                f"  MODEL_ZOO_PACS_URL={server.dicomweb_url} MODEL_ZOO_PACS_USERNAME={USER} "
                f"MODEL_ZOO_PACS_PASSWORD={PASSWORD}\nCtrl-C stops it.",
                flush=True,
            )
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
