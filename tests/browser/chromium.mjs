// The harness of the browser specs: Debian's headless Chromium through playwright-core (no downloaded
// browser), a `check` that records what passed, and one JSON object on stdout; exit 1 on a failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

// Runs `body(context, result, check)` in a fresh headless browser profile, then prints `result` and exits.
export async function runInChromium(body) {
  const result = { checks: [] };
  const check = (condition, what) => {
    if (!condition) throw new Error(`check failed: ${what}`);
    result.checks.push(what);
  };
  const userDataDir = mkdtempSync(join(tmpdir(), "leukoflow-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
      headless: true,
      viewport: { width: 1100, height: 900 },
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
    });
    await body(context, result, check);
    result.ok = true;
  } catch (err) {
    result.ok = false;
    result.error = String(err && err.stack ? err.stack : err);
  } finally {
    if (context) await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}
