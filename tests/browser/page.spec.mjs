// Drives the prediction page in Debian's headless Chromium (playwright-core, no downloaded browser).
// Usage: node page.spec.mjs BASE_URL IMAGE SECOND_IMAGE TEXT_FILE [SCREENSHOT.png]
// Prints one JSON object with what the page showed; exits non-zero (with the reason) on any failed check.
import { runInChromium } from "./chromium.mjs";

const [baseUrl, imagePath, secondImagePath, textPath, screenshotPath] = process.argv.slice(2);
const timeout = 60000;

await runInChromium(async (context, result, check) => {
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  const consoleErrors = [];
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
  const external = [];
  page.on("request", (req) => {
    const url = req.url();
    if (!url.startsWith(baseUrl) && !url.startsWith("data:") && !url.startsWith("blob:")) external.push(url);
  });

  await page.goto(baseUrl + "/", { waitUntil: "load" });
  await page.waitForSelector("#model-status.ok");
  result.model_status = (await page.textContent("#model-status")).trim();
  check(/version \d+/.test(result.model_status), "the header names the model version");
  check(await page.isVisible(".disclaimer"), "the disclaimer is shown");

  // 1. Two images at once: one card each with a stage, four bars, the version, then the heatmap toggle.
  await page.setInputFiles("#file", [secondImagePath, imagePath]);
  await page.waitForFunction(() => document.querySelectorAll(".card .stage-name").length === 2);
  const card = page.locator(".card").first(); // the newest card is on top: imagePath
  result.stage = (await card.locator(".stage-name").textContent()).trim();
  result.stage_class = await card.locator(".stage-name").getAttribute("data-class");
  check(["Benign", "Early", "Pre", "Pro"].includes(result.stage_class), "a stage from the four classes is shown");
  result.bars = await card.locator(".bars li").count();
  check(result.bars === 4, "four confidence bars");
  const widths = await card.locator(".bars .fill").evaluateAll((els) => els.map((e) => parseFloat(e.style.width)));
  const total = widths.reduce((a, b) => a + b, 0);
  check(Math.abs(total - 100) < 1.5, `bar widths add up to 100% (got ${total.toFixed(1)})`);
  result.meta = (await card.locator(".meta").textContent()).trim();
  check(/version \d+/.test(result.meta), "the card names the version that answered");
  result.low_confidence = await card.locator("[data-testid=low-confidence]").count();

  const toggle = card.locator("button.toggle");
  await page.waitForFunction(() => {
    const b = document.querySelector(".card button.toggle");
    return b && !b.disabled;
  });
  const before = await card.locator("img.preview").getAttribute("src");
  await toggle.click();
  check((await toggle.getAttribute("aria-pressed")) === "true", "the toggle is pressed");
  const after = await card.locator("img.preview").getAttribute("src");
  check(before.startsWith("blob:") && after.startsWith("data:image/png;base64,"), "the heatmap overlay replaces the image");
  await page.waitForFunction(() => {
    const img = document.querySelector(".card img.preview");
    return img && img.complete && img.naturalWidth > 0;
  });
  check(await card.locator(".legend").first().isVisible(), "the heatmap legend is shown");
  result.attention = ((await card.locator(".attention").textContent().catch(() => "")) || "").trim();
  if (screenshotPath) {
    await page.screenshot({ path: screenshotPath, fullPage: true });
    result.screenshot = screenshotPath;
  }
  await toggle.click();
  check((await card.locator("img.preview").getAttribute("src")) === before, "toggling back shows the original image");

  // 2. A text file: a readable error, not a blank page or a stack trace.
  await page.setInputFiles("#file", textPath);
  const bad = page.locator(".card").first();
  await bad.locator(".error").waitFor();
  result.text_error = (await bad.locator(".error").textContent()).trim();
  check(/could not be read as an image/i.test(result.text_error), "the text file gets the not-an-image message");
  check(!/Traceback|at \w+\.\w+ \(/.test(result.text_error), "no stack trace");

  // 3. Too large: refused in the browser before anything is sent, naming the limit.
  const info = await (await fetch(baseUrl + "/ui/models/leukemia")).json();
  await page.setInputFiles("#file", { name: "huge.jpg", mimeType: "image/jpeg", buffer: Buffer.alloc(info.max_upload_bytes + 1, 1) });
  const big = page.locator(".card").first();
  await big.locator(".error").waitFor();
  result.size_error = (await big.locator(".error").textContent()).trim();
  check(/too large/i.test(result.size_error) && /limit/i.test(result.size_error), "an oversized file is refused with the limit named");

  // 4. Server unreachable (requests fail at the network): a readable message.
  await page.route("**/*:predict", (route) => route.abort("connectionrefused"));
  await page.setInputFiles("#file", imagePath);
  const down = page.locator(".card").first();
  await down.locator(".error").waitFor();
  result.down_error = (await down.locator(".error").textContent()).trim();
  check(/cannot reach the model server/i.test(result.down_error), "a failed request says the server cannot be reached");
  await page.unroute("**/*:predict");

  result.cards = await page.locator(".card").count();
  check(result.cards === 5, "one card per upload");

  // 5. With several labels, the reviewer can switch to the canary and the card says who answered.
  if (await page.isVisible("#label-choice")) {
    const canary = await page.locator("#label-select option[value=canary]").count();
    if (canary) {
      await page.selectOption("#label-select", "canary");
      await page.waitForFunction(() => /\(canary\)/.test(document.querySelector("#model-status").textContent));
      await page.setInputFiles("#file", imagePath);
      await page.locator(".card").first().locator(".meta").waitFor();
      result.canary_meta = (await page.locator(".card").first().locator(".meta").textContent()).trim();
      check(/canary/.test(result.canary_meta), "the canary's answer names the canary label");
    }
  }
  check(consoleErrors.length === 0, `no JavaScript errors (${consoleErrors.join("; ")})`);
  check(external.length === 0, `nothing fetched from outside (${external.join(", ")})`);
});
