// The refer state in Debian's headless Chromium (playwright-core): a calibrated model's answers on the page.
// Usage: node refer.spec.mjs BASE_URL IN_DISTRIBUTION_IMAGE OUT_OF_DISTRIBUTION_IMAGE [SCREENSHOT.png]
// Prints one JSON object with what the page showed; exits non-zero (with the reason) on any failed check.
import { runInChromium } from "./chromium.mjs";

const [baseUrl, smearPath, oodPath, screenshotPath] = process.argv.slice(2);

await runInChromium(async (context, result, check) => {
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  const consoleErrors = [];
  page.on("pageerror", (err) => consoleErrors.push(String(err)));

  await page.goto(baseUrl + "/", { waitUntil: "load" });
  await page.waitForSelector("#model-status.ok");

  // 1. An image unlike the training images: the refer state with its reason, no stage headline.
  await page.setInputFiles("#file", oodPath);
  const referred = page.locator(".card").first();
  await referred.locator("[data-testid=refer]").waitFor();
  result.refer_text = (await referred.locator("[data-testid=refer]").textContent()).trim();
  result.refer_reason = await referred.locator("[data-testid=refer]").getAttribute("data-reason");
  check(/refer to a pathologist/i.test(result.refer_text), "the refer state says to refer to a pathologist");
  check(/not like the images the model was trained on/i.test(result.refer_text), "the reason: not like the training images");
  result.referred_stage = await referred.locator(".stage, .stage-name, [data-testid=stage]").count();
  check(result.referred_stage === 0, "no stage headline on a referred image");
  check(!/Predicted stage/.test(await referred.textContent()), "no 'Predicted stage' text on a referred image");
  check(await referred.evaluate((e) => e.classList.contains("referred")), "the card is marked referred");
  result.referred_bars = await referred.locator(".bars li").count();
  check(result.referred_bars === 4, "every class's confidence is still listed");
  check((await referred.locator(".bars li.best").count()) === 0, "no class is highlighted as the answer");
  // Grad-CAM stays available on a referred image.
  await page.waitForFunction(() => {
    const b = document.querySelector(".card button.toggle");
    return b && !b.disabled;
  });
  await referred.locator("button.toggle").click();
  const overlay = await referred.locator("img.preview").getAttribute("src");
  check(overlay.startsWith("data:image/png;base64,"), "the heatmap is available on a referred image");
  if (screenshotPath) {
    await page.screenshot({ path: screenshotPath, fullPage: true });
    result.screenshot = screenshotPath;
  }

  // 2. A smear like the training images: a stage headline, no refer state.
  await page.setInputFiles("#file", smearPath);
  await page.waitForFunction(() => document.querySelectorAll(".card").length === 2 &&
    document.querySelector(".card").getAttribute("aria-busy") === "false");
  const accepted = page.locator(".card").first();
  await accepted.locator(".stage-name").waitFor();
  result.stage_class = await accepted.locator(".stage-name").getAttribute("data-class");
  check(["Benign", "Early", "Pre", "Pro"].includes(result.stage_class), "an in-distribution smear shows a stage");
  check((await accepted.locator("[data-testid=refer]").count()) === 0, "no refer state on an in-distribution smear");
  result.meta = (await accepted.locator(".meta").textContent()).trim();
  // This server has no cases folder: no Confirm / Correct, no reviewer fields.
  result.review_controls = await page.locator("[data-testid=review]").count();
  check(result.review_controls === 0 && !(await page.locator("#reviewer-panel").isVisible()),
    "no review controls when the server takes no cases");

  check(consoleErrors.length === 0, `no JavaScript errors (${consoleErrors.join("; ")})`);
});
