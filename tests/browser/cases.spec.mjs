// Confirm and correct on the page (the server has a cases folder): the review controls, the reviewer and
// site fields, and what the case store answered, in Debian's headless Chromium (playwright-core).
// Usage: node cases.spec.mjs BASE_URL IN_DISTRIBUTION_IMAGE OUT_OF_DISTRIBUTION_IMAGE [SCREENSHOT.png]
// Prints one JSON object with what the page showed; exits non-zero (with the reason) on any failed check.
import { runInChromium } from "./chromium.mjs";

const [baseUrl, smearPath, oodPath, screenshotPath] = process.argv.slice(2);

async function outcomeOf(card) {
  const outcome = card.locator(".review-outcome");
  await card.page().waitForFunction((node) => node.hasAttribute("data-outcome"), await outcome.elementHandle());
  return { outcome: await outcome.getAttribute("data-outcome"), text: (await outcome.textContent()).trim() };
}

async function upload(page, path, cards) {
  await page.setInputFiles("#file", path);
  await page.waitForFunction((n) => document.querySelectorAll(".card").length === n &&
    document.querySelector(".card").getAttribute("aria-busy") === "false", cards);
  const card = page.locator(".card").first();
  await card.locator("[data-testid=review]").waitFor();
  return card;
}

await runInChromium(async (context, result, check) => {
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  const consoleErrors = [];
  page.on("pageerror", (err) => consoleErrors.push(String(err)));

  await page.goto(baseUrl + "/", { waitUntil: "load" });
  await page.waitForSelector("#model-status.ok");
  check(await page.locator("#reviewer-panel").isVisible(), "the reviewer and site fields show (the server takes cases)");
  result.storage_note = (await page.locator("#storage-note").textContent()).trim();

  // 1. An accepted smear: Confirm names the stage; without a reviewer nothing is sent.
  const smear = await upload(page, smearPath, 1);
  result.stage_class = await smear.locator(".stage-name").getAttribute("data-class");
  const confirm = smear.locator("button.review-confirm");
  result.confirm_text = (await confirm.textContent()).trim();
  check((await confirm.getAttribute("data-label")) === result.stage_class, "Confirm carries the predicted class");
  result.correct_options = await smear.locator(".review-correct select option").evaluateAll(
    (options) => options.map((o) => ({ value: o.value, text: o.textContent })));
  check(result.correct_options.length === 3, "Correct to offers the three other stages");
  await confirm.click();
  result.missing_reviewer = (await smear.locator(".review-outcome").textContent()).trim();
  check(/name and your site/.test(result.missing_reviewer), "asks for the reviewer and site first");

  await page.fill("#reviewer", "dr-page");
  await page.fill("#site", "lab-page");
  await confirm.click();
  result.confirmed = await outcomeOf(smear);
  check(result.confirmed.outcome === "added", `the confirmation is added (${result.confirmed.text})`);

  // 2. Correcting the same image to another stage: a conflict, said so.
  const other = result.correct_options[0];
  await smear.locator(".review-correct select").selectOption(other.value);
  await smear.locator("button.review-save").click();
  await page.waitForFunction(() => {
    const node = document.querySelector(".card .review-outcome");
    return node && node.getAttribute("data-outcome") === "conflict";
  });
  result.corrected = await outcomeOf(smear);
  result.corrected_to = other.value;

  // 3. A referred image: no Confirm, a "Label as" choice.
  const referred = await upload(page, oodPath, 2);
  check(await referred.evaluate((e) => e.classList.contains("referred")), "the noise image is referred");
  check((await referred.locator("button.review-confirm").count()) === 0, "no Confirm on a referred image");
  await referred.locator(".review-correct select").selectOption("Pro");
  await referred.locator("button.review-save").click();
  result.labelled = await outcomeOf(referred);
  check(result.labelled.outcome === "added", `the referred image's label is added (${result.labelled.text})`);

  if (screenshotPath) {
    await page.screenshot({ path: screenshotPath, fullPage: true });
    result.screenshot = screenshotPath;
  }
  check(consoleErrors.length === 0, `no JavaScript errors (${consoleErrors.join("; ")})`);
});
