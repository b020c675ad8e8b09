"""The labelling window as a program of its own: its command line, --exit-with, and a real window on an X server."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from gym_prefs import PreferenceStore

pytest.importorskip("pygame", reason="the labelling window needs pygame: pip install 'gym-prefs[human]'")


@pytest.fixture
def x_display():
    """A virtual X screen of its own (Xvfb picks a free display number and says which)."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24"], pass_fds=(write,), stderr=subprocess.DEVNULL
    )
    os.close(write)
    with os.fdopen(read) as ready:
        number = ready.readline().strip()  # written once it accepts connections; "" if it died
    try:
        assert number, "Xvfb did not start"
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait()


def on_display(display):
    """This process's environment with a real (virtual) display instead of SDL's dummy driver."""
    drop = ("SDL_VIDEODRIVER", "SDL_VIDEO_X11_WMCLASS")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"DISPLAY": display}


def find_window(process, env, timeout=60.0):
    """The id of the visible window of ``process`` on the display of ``env``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        search = ["xdotool", "search", "--onlyvisible", "--pid", str(process.pid)]
        found = subprocess.run(search, env=env, capture_output=True, text=True).stdout.split()
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("the window did not appear")


def wait_for_title(window, env, accept, timeout=60.0):
    """The title of ``window`` once ``accept(title)`` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        name = subprocess.run(["xdotool", "getwindowname", window], env=env, capture_output=True, text=True).stdout
        if accept(name.strip()):
            return name.strip()
        time.sleep(0.1)
    raise AssertionError(f"the window's title stayed {name.strip()!r}")


@pytest.mark.skipif(
    not (shutil.which("Xvfb") and shutil.which("xdotool")),
    reason="needs Xvfb and xdotool (apt-get install xvfb xdotool); .ci/run installs them",
)
def test_a_person_labels_in_a_real_window(store_path, x_display):
    env = on_display(x_display)
    viewer = None
    try:
        viewer = subprocess.Popen(
            [sys.executable, "-m", "gym_prefs.cli", "label", str(store_path), "--exit-when-done"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        window = find_window(viewer, env)
        subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, timeout=10)
        keys = ["Left", "Right", "Up", "Down"] * 3
        answered_title = None
        for key in keys:
            with PreferenceStore(store_path, readonly=True) as store:
                before = len(store.answers())
            # Keys answer only a pair on screen, which the title names: wait for the next one.
            title = wait_for_title(window, env, lambda name, last=answered_title: "query" in name and name != last)
            time.sleep(0.4)  # a person looks at the clips
            subprocess.run(["xdotool", "key", key], env=env, timeout=10)
            answered_title = title
            deadline = time.time() + 20
            while time.time() < deadline:
                with PreferenceStore(store_path, readonly=True) as store:
                    if len(store.answers()) > before:
                        break
                time.sleep(0.1)
        out, err = viewer.communicate(timeout=60)  # closes by itself once nothing is pending
        assert viewer.returncode == 0, err[-2000:]
        with PreferenceStore(store_path, readonly=True) as store:
            labels = [a.label for a in store.answers()]
        assert labels == ["first", "second", "equal", "skip"] * 3
        assert "12 answers stored" in out
    finally:
        if viewer is not None and viewer.poll() is None:
            viewer.kill()


@pytest.mark.skipif(
    not (shutil.which("Xvfb") and shutil.which("xdotool") and shutil.which("xprop")),
    reason="needs Xvfb, xdotool and xprop (apt-get install xvfb xdotool x11-utils); .ci/run installs them",
)
def test_the_window_is_named_for_the_program(store_path, x_display):
    env = on_display(x_display)
    viewer = subprocess.Popen(
        [sys.executable, "-m", "gym_prefs.viewer", str(store_path), "--exit-with", str(os.getpid())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        window = find_window(viewer, env)
        properties = subprocess.run(
            ["xprop", "-id", window, "WM_CLASS", "_NET_WM_NAME"], env=env, capture_output=True, text=True, timeout=10
        ).stdout
        # Desktops group, name and match windows by their class (instance, class): not "-c" or "-m".
        assert 'WM_CLASS(STRING) = "gym-prefs", "gym-prefs"' in properties, properties
        title = re.search(r'_NET_WM_NAME\(UTF8_STRING\) = "(.*)"', properties)
        assert title is not None, properties
        assert title.group(1).startswith("gym-prefs label") and store_path.name in title.group(1)
    finally:
        viewer.terminate()
        viewer.communicate(timeout=30)


def test_exit_with_closes_the_window_when_that_process_dies(store_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    viewer = subprocess.Popen(
        [sys.executable, "-m", "gym_prefs.cli", "label", str(store_path), "--exit-with", str(sleeper.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(5)  # started up
        assert viewer.poll() is None, viewer.communicate()[1][-2000:]
        sleeper.kill()
        sleeper.wait()
        killed = time.monotonic()
        out, err = viewer.communicate(timeout=10)
        print(f"window closed {time.monotonic() - killed:.2f} s after process {sleeper.pid} was killed")
        assert viewer.returncode == 0, err[-2000:]
        assert f"process {sleeper.pid} (--exit-with) has ended, so the window closes" in err
        assert "0 answers stored" in out
    finally:
        for process in (sleeper, viewer):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_window_is_its_own_program():
    # Its own parser and usage line, and no detour through the command line (no import cycle).
    check = (
        "import sys\n"
        "from gym_prefs.viewer import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0\n"
        "assert 'gym_prefs.cli' not in sys.modules, 'the viewer imported the command line'\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: python -m gym_prefs.viewer")
    for option in ("--instruction", "--labeler", "--render-size", "--exit-when-done", "--exit-with PID"):
        assert option in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "gym_prefs.viewer", "no-such-store.db"], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert missing.stderr.startswith("gym-prefs: no preference store at no-such-store.db: give the store of a run")
    assert not os.path.exists("no-such-store.db")  # not created
